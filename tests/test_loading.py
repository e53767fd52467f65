"""The one loader: folders, dtypes, the bundled model, and clear errors for everything else."""

from pathlib import Path

import pytest
import torch

import erasure
import erasure.assets
from erasure.adapters import StableDiffusion2Adapter, StableDiffusionXLAdapter, adapter_for
from erasure.assets import bundled_model_path
from erasure.loading import resolve_device, resolve_dtype
from erasure.tiny import build_tiny_pipeline


@pytest.fixture
def own_tiny_folder(tiny_pipeline_folder, tmp_path):
    """A copy of the shared tiny folder that a test may damage."""
    import shutil

    return Path(shutil.copytree(tiny_pipeline_folder, tmp_path / "model"))


def test_folder_loads_on_cpu_in_float32_with_its_id(tiny_pipeline_folder):
    pipe = erasure.load_pipeline(tiny_pipeline_folder, device="cpu")
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"
    assert pipe.name_or_path == str(tiny_pipeline_folder)
    assert getattr(pipe, "safety_checker", None) is None


def test_dtype_can_be_overridden(tiny_pipeline_folder):
    assert erasure.load_pipeline(tiny_pipeline_folder, device="cpu", dtype="bfloat16").unet.dtype == torch.bfloat16


def test_dtype_defaults_follow_the_device():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    with pytest.raises(erasure.ErasureError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))


def test_the_adapter_recognises_each_family():
    assert type(adapter_for(build_tiny_pipeline("sd2"))) is StableDiffusion2Adapter
    assert type(adapter_for(build_tiny_pipeline("sdxl"))) is StableDiffusionXLAdapter
    assert adapter_for(build_tiny_pipeline("sd1")).family == "sd1"


@pytest.mark.parametrize(
    "model, message",
    [
        ("/no/such/folder", "not found"),
        ("model.ckpt", "not found"),
        ("nobody/no-such-model-here", "could not be loaded from the Hugging Face Hub"),
    ],
)
def test_missing_models_are_clear_errors(model, message):
    with pytest.raises(erasure.ErasureError, match=message):
        erasure.load_pipeline(model, device="cpu")


def test_a_missing_bundled_model_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(erasure.assets, "_ROOT", tmp_path)
    with pytest.raises(erasure.ErasureError, match="run scripts/build_bundled_models.sh"):
        erasure.load_pipeline("mini-sd", device="cpu")
    (tmp_path / "mini-sd").mkdir()  # a folder without model_index.json is not a pipeline yet
    with pytest.raises(erasure.ErasureError, match="run scripts/build_bundled_models.sh"):
        erasure.load_pipeline("mini-sd", device="cpu")
    assert bundled_model_path("mini-sd") == tmp_path / "mini-sd"
    with pytest.raises(erasure.ErasureError, match="unknown bundled model 'mini-xl'"):
        bundled_model_path("mini-xl")


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(erasure.ErasureError, match="no model_index.json"):
        erasure.load_pipeline(tmp_path, device="cpu")


def test_pickled_and_corrupt_single_files_are_refused(tmp_path):
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(b"\x80\x04")
    with pytest.raises(erasure.ErasureError, match="only .safetensors checkpoints"):
        erasure.load_pipeline(pickled, device="cpu")
    corrupt = tmp_path / "model.safetensors"
    corrupt.write_bytes(b"\x00" * 32)
    with pytest.raises(erasure.ErasureError, match="not a readable .safetensors checkpoint"):
        erasure.load_pipeline(corrupt, device="cpu")


@pytest.mark.parametrize(
    "device, message",
    [("banana", "unknown device 'banana'"), ("meta", "is not supported"), ("", "unknown device ''"),
     ("cuda", "asks for a CUDA GPU"), ("cuda:7", "CUDA GPU|this machine has")],
)
def test_devices_are_checked_before_loading(device, message):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the GPU asked for")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(erasure.ErasureError, match=message):
        resolve_device(device)
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    "content, message",
    [(b"{oops", "model_index.json is not valid JSON"), (b"\xff\xfe\x00", "model_index.json is not valid JSON"),
     (b'"StableDiffusionPipeline"', "must hold a JSON object"),
     (b'{"_class_name": "FluxPipeline"}', "names the pipeline 'FluxPipeline'"),
     (b'{"_class_name": 3}', "names the pipeline 3")],
)
def test_a_broken_model_index_is_one_clear_error(own_tiny_folder, content, message):
    (own_tiny_folder / "model_index.json").write_bytes(content)
    with pytest.raises(erasure.ErasureError, match=message):
        erasure.load_pipeline(own_tiny_folder, device="cpu")


def test_a_component_checkpoint_replaced_by_erase_weights_is_named(own_tiny_folder, tmp_path):
    pipe = erasure.load_pipeline(own_tiny_folder, device="cpu")
    weights = erasure.erase(pipe, "uce", "airplane").save(tmp_path / "w.safetensors")
    unet_file = own_tiny_folder / "unet" / "diffusion_pytorch_model.safetensors"
    unet_file.write_bytes(weights.read_bytes())
    with pytest.raises(erasure.ErasureError, match=r"unet is not a complete UNet2DConditionModel checkpoint \(\d+ of \d+ "
                                                   r"tensors missing, e.g. conv_in.weight\); .* is an erasure weights file"):
        erasure.load_pipeline(own_tiny_folder, device="cpu")
    with pytest.raises(erasure.ErasureError, match="is an erasure weights file, not a model"):
        erasure.load_pipeline(weights, device="cpu")


@pytest.mark.parametrize("model, message", [("", "no model given"), ("no/such/folder", "not found: check the path"),
                                            ("C:\\models\\sd", "not found: check the path")])
def test_paths_are_not_sent_to_the_hub(model, message):
    with pytest.raises(erasure.ErasureError, match=message):
        erasure.load_pipeline(model, device="cpu")
