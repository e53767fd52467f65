"""The weight format: round trips, plain diffusers loading, refusing the wrong base, bad files."""

import dataclasses
import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import erasure
from erasure.adapters import adapter_for
from erasure.tiny import build_tiny_pipeline
from erasure.weights import BaseMismatchWarning, EditedWeights, export_pipeline


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
    assert set(load_file(path)) == set(edited.tensors)  # bare diffusers UNet names, as pipe.unet.state_dict() has
    result = plain.unet.load_state_dict(load_file(path), strict=False)
    assert not result.unexpected_keys
    assert torch.equal(_noise_prediction(plain), _noise_prediction(erasure.apply(build_tiny_pipeline("sd1"), path)))


def test_metadata_records_provenance(sd1_pipe, tmp_path):
    path = erasure.erase(sd1_pipe, "uce", "airplane; car", lam=0.25).save(tmp_path / "w.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["format"] == "erasure" and meta["format_version"] == "2"
    assert json.loads(meta["components"]) == ["unet"] and json.loads(meta["key_layout"]) == {}
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
        name = next(iter(EditedWeights.load(path).tensors))
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


def test_non_finite_edits_are_never_saved_or_applied(sd1_pipe, tmp_path):
    edited = erasure.erase(sd1_pipe, "uce", "airplane", lam=0.25)
    name = next(iter(edited.tensors))
    broken = dataclasses.replace(edited, tensors={**edited.tensors, name: torch.full_like(edited.tensors[name], float("inf"))},
                                 config={**edited.config, "erase_scale": float("nan")})
    with pytest.raises(erasure.ErasureError, match=rf"uce produced NaN or infinite values in {name}: check its settings "
                                                   r"\(erase_scale=nan\)"):
        broken.save(tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []
    before = _noise_prediction(sd1_pipe)
    for check_base in (True, False):
        with pytest.raises(erasure.ErasureError, match="NaN or infinite"):
            broken.apply(sd1_pipe, check_base=check_base)
    assert torch.equal(_noise_prediction(sd1_pipe), before)
    # A finite config: every real-valued setting is named as a suspect.
    finite = dataclasses.replace(broken, config=edited.config)
    with pytest.raises(erasure.ErasureError, match=r"lam=0.25, erase_scale=1"):
        finite.save(tmp_path / "w.safetensors")


def test_a_nan_file_written_elsewhere_is_refused_on_load(edited, tmp_path):
    path = edited.save(tmp_path / "w.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    tensors = {name: torch.full_like(value, float("nan")) for name, value in load_file(path).items()}
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata=meta)
    with pytest.raises(erasure.ErasureError, match="nan.safetensors is unusable: uce produced NaN"):
        EditedWeights.load(tmp_path / "nan.safetensors")


def _with_fingerprint(edited, tensors=None, prints="keep"):
    return dataclasses.replace(edited, tensors=tensors or edited.tensors,
                               base_fingerprint=edited.base_fingerprint if prints == "keep" else prints)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e, unet: _with_fingerprint(e, prints={}), "no base fingerprint,"),
        (lambda e, unet: _with_fingerprint(e, prints=None), "a malformed base fingerprint"),
        (lambda e, unet: _with_fingerprint(e, prints=[1, 2]), "a malformed base fingerprint"),
        (lambda e, unet: _with_fingerprint(e, prints={k: v[:4] for k, v in e.base_fingerprint.items()}), "malformed"),
        (lambda e, unet: _with_fingerprint(e, prints={k: ["a"] * 10 for k in e.base_fingerprint}), "malformed"),
        (lambda e, unet: _with_fingerprint(e, tensors={**e.tensors, "conv_in.weight": unet.conv_in.weight.detach() * 0}),
         "no base fingerprint for conv_in.weight"),
        (lambda e, unet: _with_fingerprint(e, prints={**e.base_fingerprint, "conv_in.weight": [0.0] * 10}),
         "a base fingerprint for conv_in.weight, a tensor they do not hold"),
    ],
    ids=["empty", "unreadable", "not-a-mapping", "too-short", "not-numbers", "tensor-without-fingerprint",
         "fingerprint-without-tensor"],
)
def test_a_fingerprint_must_cover_exactly_the_tensors(sd1_pipe, change, message):
    edited = change(erasure.erase(sd1_pipe, "uce", "airplane"), sd1_pipe.unet)
    with pytest.raises(erasure.ErasureError, match=message) as error:
        edited.apply(sd1_pipe)
    assert "--no-check-base" in str(error.value) and "check_base=False" in str(error.value)
    with pytest.warns(BaseMismatchWarning, match="cannot be checked"):
        edited.apply(sd1_pipe, check_base=False)  # the caller may still choose to apply unchecked
    assert all(torch.equal(sd1_pipe.unet.get_parameter(n), v) for n, v in edited.tensors.items())


def test_a_file_without_a_fingerprint_loads_and_is_refused_only_when_checked(edited, tmp_path):
    path = edited.save(tmp_path / "w.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
    del meta["base_fingerprint"]
    save_file(load_file(path), str(tmp_path / "bare.safetensors"), metadata=meta)
    bare = EditedWeights.load(tmp_path / "bare.safetensors")
    pipe = build_tiny_pipeline(edited.base_model.split("-")[1])
    with pytest.raises(erasure.ErasureError, match="no base fingerprint"):
        erasure.apply(pipe, tmp_path / "bare.safetensors")
    with pytest.warns(BaseMismatchWarning, match=r"cannot be checked \(no base fingerprint\)"):
        erasure.apply(pipe, bare, check_base=False)


def test_the_fingerprint_covers_only_the_changed_tensors():
    original = {"unet": {"a": torch.ones(4), "b": torch.zeros(4)}, "text_encoder": {"c": torch.ones(2)}}
    new = {"unet": {"a": torch.ones(4) * 2}, "text_encoder": {"c": torch.zeros(2)}}
    edited = EditedWeights.from_edit(original, new, method="uce", concepts=["c"], config={}, base_model="m")
    assert set(edited.base_fingerprint) == set(edited.tensors) == {"a", "text_encoder.c"}


def test_saving_into_a_folder_or_exporting_over_a_file_is_refused(sd1_pipe, tmp_path):
    edited = erasure.erase(sd1_pipe, "uce", "airplane")
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(erasure.ErasureError, match="is a folder"):
        edited.save(tmp_path / "dir.safetensors", overwrite=True)
    (tmp_path / "pipe").write_text("not a folder")
    with pytest.raises(erasure.ErasureError, match="exists and is not a folder"):
        export_pipeline(edited, sd1_pipe, tmp_path / "pipe", overwrite=True)
    with pytest.raises(erasure.ErasureError, match="already exists"):
        export_pipeline(edited, sd1_pipe, tmp_path / "pipe")
    assert (tmp_path / "pipe").read_text() == "not a folder"


def test_erase_export_lora_writes_a_lora_of_the_edit(tiny_pipeline_folder, tmp_path, capsys):
    from erasure.cli import main

    output = tmp_path / "w.safetensors"
    assert main(["--method", "mace", "--concepts", "cat", "--model", str(tiny_pipeline_folder), "--output", str(output),
                 "--set", "images_per_concept=1", "--set", "generation_steps=1", "--set", "train_steps=1",
                 "--export", "lora"]) == 0
    assert f"LoRA {tmp_path / 'w-lora.safetensors'} (rank " in capsys.readouterr().out
    edited = EditedWeights.load(output)
    lora = load_file(tmp_path / "w-lora.safetensors")
    assert {key.rsplit(".lora_", 1)[0] for key in lora} == {f"unet.{n.removesuffix('.weight')}" for n in edited.tensors}
