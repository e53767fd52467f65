"""The bundled world models: files, sizes, dtypes, and accuracy on held-out world images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import erasure.assets
from erasure.assets import BUNDLED_MODELS, bundled_model_path
from erasure.loading import generation_defaults
from erasure.world.data import HELD_OUT_SEED, render_dataset

ASSETS = Path(erasure.assets.__file__).parent
MINI_SD_BUILT = (ASSETS / "mini-sd" / "model_index.json").is_file()
SIZE_BUDGET_MB = 40


@pytest.fixture(scope="module")
def held_out():
    # The first 300 scenes of the split no model trains on.
    return render_dataset(300, HELD_OUT_SEED)


def _images(data) -> torch.Tensor:
    return torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255


@pytest.mark.skipif(not MINI_SD_BUILT, reason="mini-sd is not built yet: scripts/build_bundled_models.sh")
def test_bundled_folders_are_small_safetensors_with_model_cards():
    files = [p for p in ASSETS.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".py"]
    assert sum(p.stat().st_size for p in files) < SIZE_BUDGET_MB * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    for name in BUNDLED_MODELS:
        assert (bundled_model_path(name) / "README.md").is_file()
    assert not (bundled_model_path("mini-sd") / "tokenizer").exists()
    assert set(generation_defaults("mini-sd")) == {"resolution", "num_inference_steps", "guidance_scale"}


def test_world_classifier_on_held_out_images(held_out):
    from erasure.world.classifier import load_world_classifier
    from erasure.world.data import SHAPE_CLASSES

    model = load_world_classifier()
    assert next(model.parameters()).dtype == torch.float32
    preds = model.classify(_images(held_out))
    single = [i for i, s in enumerate(held_out.scenes) if len(s.objects) <= 1]
    truth = [s.objects[0].shape if s.objects else "none" for s in held_out.scenes]
    shape_acc = sum(preds.shape[i] == truth[i] for i in single) / len(single)
    colours = [i for i in single if held_out.scenes[i].objects]
    colour_acc = sum(preds.colour[i] == held_out.scenes[i].objects[0].colour for i in colours) / len(colours)
    assert shape_acc >= 0.97 and colour_acc >= 0.97
    assert preds.probs["shape"].shape == (300, len(SHAPE_CLASSES))


def test_world_classifier_accepts_pil_images(held_out):
    from PIL import Image

    from erasure.world.classifier import classify

    pil = [Image.fromarray(a) for a in held_out.images[:4]]
    assert classify(pil).shape == classify(_images(held_out)[:4]).shape


@pytest.mark.skipif(not MINI_SD_BUILT, reason="mini-sd and mini-clip are not built yet: scripts/build_bundled_models.sh")
def test_mini_clip_zero_shot(held_out):
    import torch.nn.functional as F

    from erasure.assets import load_mini_clip
    from erasure.tokenizer import clip_tokenizer
    from erasure.world import SHAPES

    model = load_mini_clip()
    assert model.dtype == torch.float32
    tok = clip_tokenizer()
    single = [i for i, s in enumerate(held_out.scenes) if len(s.objects) == 1]
    # transformers >= 5 returns the projected features as ``pooler_output``, 4.x a tensor
    features = lambda out: out if isinstance(out, torch.Tensor) else out.pooler_output
    with torch.no_grad():
        image = F.normalize(features(model.get_image_features(pixel_values=_images(held_out)[single] * 2 - 1)), dim=-1)
        ids = tok([f"a photo of a {s}" for s in SHAPES], padding=True, return_tensors="pt").input_ids
        text = F.normalize(features(model.get_text_features(input_ids=ids)), dim=-1)
    pred = (image @ text.T).argmax(-1)
    truth = torch.tensor([SHAPES.index(held_out.scenes[i].objects[0].shape) for i in single])
    assert (pred == truth).float().mean() >= 0.9


@pytest.mark.skipif(not MINI_SD_BUILT, reason="mini-sd is not built yet: scripts/build_bundled_models.sh")
def test_fp16_files_load_as_fp32():
    import erasure

    pipe = erasure.load_pipeline("mini-sd", device="cpu", dtype="float32")
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        assert {p.dtype for p in module.parameters()} == {torch.float32}
    assert pipe.text_encoder.config.hidden_size == pipe.unet.config.cross_attention_dim >= 128
