"""The weight format: round trips, plain diffusers loading, refusing the wrong base, bad files."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import erasure
from erasure.adapters import adapter_for
from erasure.tiny import build_tiny_pipeline
from erasure.weights import EditedWeights, export_pipeline


def _noise_prediction(pipe):
    adapter = adapter_for(pipe)
    latents = torch.randn(1, *adapter.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return adapter.predict_noise(latents, 500, adapter.encode(["airplane in the sky"]))


@pytest.fixture
def edited(tiny_pipe):
    return erasure.erase(tiny_pipe, "uce", "airplane")


def test_save_then_apply_to_a_fresh_pipeline_gives_identical_outputs(tiny_pipe, edited, tmp_path):
    path = edited.save(tmp_path / "w.safetensors")
    family = adapter_for(tiny_pipe).family
    expected = _noise_prediction(edited.apply(build_tiny_pipeline(family)))
    fresh = erasure.apply(build_tiny_pipeline(family), path)
    assert torch.equal(_noise_prediction(fresh), expected)
    assert not torch.equal(_noise_prediction(build_tiny_pipeline(family)), expected)


def test_plain_load_state_dict_works(sd1_pipe, tmp_path):
    edited = erasure.erase(sd1_pipe, "uce", "airplane")
    path = edited.save(tmp_path / "w.safetensors")
    plain = build_tiny_pipeline("sd1")
    result = plain.unet.load_state_dict(load_file(path), strict=False)
    assert not result.unexpected_keys
    assert torch.equal(_noise_prediction(plain), _noise_prediction(erasure.apply(build_tiny_pipeline("sd1"), path)))


def test_metadata_records_provenance(sd1_pipe, tmp_path):
    path = erasure.erase(sd1_pipe, "uce", "airplane; car", lam=0.25).save(tmp_path / "w.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["format"] == "erasure" and meta["format_version"] == "1"
    assert meta["method"] == "uce"
    assert json.loads(meta["concepts"]) == ["airplane", "car"]
    assert json.loads(meta["config"])["lam"] == 0.25
    assert meta["base_model"] == "tiny-sd1-seed0"
    assert set(json.loads(meta["base_fingerprint"])) == set(load_file(path))
    assert {"erasure", "torch", "diffusers"} <= set(json.loads(meta["versions"]))
    loaded = EditedWeights.load(path)
    assert loaded.concepts == ["airplane", "car"] and loaded.config["lam"] == 0.25


def test_weights_for_another_base_model_are_refused(sd1_pipe, tmp_path):
    path = erasure.erase(sd1_pipe, "uce", "airplane").save(tmp_path / "w.safetensors")
    other_seed = build_tiny_pipeline("sd1", seed=1)
    with pytest.raises(erasure.ErasureError, match="differs from the base model"):
        erasure.apply(other_seed, path)
    with pytest.raises(erasure.ErasureError, match="made for 'tiny-sd1-seed0'"):
        erasure.apply(build_tiny_pipeline("sdxl"), path)


def test_a_half_precision_copy_of_the_base_is_accepted(sd1_pipe, tmp_path):
    path = erasure.erase(sd1_pipe, "uce", "airplane").save(tmp_path / "w.safetensors")
    for dtype in (torch.float16, torch.bfloat16):
        pipe = build_tiny_pipeline("sd1").to(dtype=dtype)
        erasure.apply(pipe, path)
        name = next(iter(load_file(path)))
        assert pipe.unet.get_parameter(name).dtype == dtype


def test_existing_output_is_not_overwritten(edited, tmp_path):
    path = edited.save(tmp_path / "w.safetensors")
    with pytest.raises(erasure.ErasureError, match="--overwrite"):
        edited.save(path)
    edited.save(path, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "content, message",
    [(b"\x00" * 64, "not a readable .safetensors"), (None, "not an erasure weights file")],
)
def test_bad_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    if content is None:
        save_file({"x": torch.zeros(2)}, str(path))
    else:
        path.write_bytes(content)
    with pytest.raises(erasure.ErasureError, match=message):
        EditedWeights.load(path)


def test_truncated_file_is_a_clear_error(edited, tmp_path):
    path = edited.save(tmp_path / "w.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(erasure.ErasureError, match="re-create it"):
        EditedWeights.load(path)


def test_export_diffusers_folder_opens_with_from_pretrained(sd1_pipe, tmp_path):
    edited = erasure.erase(sd1_pipe, "uce", "airplane")
    before = _noise_prediction(sd1_pipe)
    folder = export_pipeline(edited, sd1_pipe, tmp_path / "pipe")
    assert torch.equal(_noise_prediction(sd1_pipe), before)  # the source pipeline is restored
    reopened = StableDiffusionPipeline.from_pretrained(folder)
    for name, value in edited.tensors.items():
        assert torch.equal(reopened.unet.get_parameter(name), value)
