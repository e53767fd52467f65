"""Models bundled with the package, trained by the project on the shapes world.

- ``mini-sd``: a diffusers ``StableDiffusionPipeline`` folder (no tokenizer: the real
  CLIP tokenizer is rebuilt offline by ``erasure.tokenizer.clip_tokenizer``).
- ``mini-clip``: the vision tower and projections of a ``CLIPModel``; its text tower
  is mini-sd's ``text_encoder`` (stored once, assembled by ``load_mini_clip``).
- ``world-classifier``: the shape/colour/style classifier (``erasure.world.classifier``).

Each folder has a README.md model card with its data, training command and accuracy.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ErasureError

BUNDLED_MODELS = ("mini-sd", "mini-clip", "world-classifier")
_ROOT = Path(__file__).resolve().parent


def bundled_model_path(name: str, needs: str | None = None) -> Path:
    """Folder of a bundled model.

    Args:
        name: one of ``BUNDLED_MODELS``.
        needs: a file inside the folder that must be there too (e.g. ``"model_index.json"``
            for a loadable pipeline); by default only the folder must exist.

    Raises:
        ErasureError: ``name`` is not a bundled model, or it (or ``needs``) is missing.
    """
    if name not in BUNDLED_MODELS:
        raise ErasureError(f"unknown bundled model {name!r}: use one of {', '.join(BUNDLED_MODELS)}")
    path = _ROOT / name
    if not (path.is_dir() and (needs is None or (path / needs).exists())):
        raise ErasureError(
            f"bundled model {name!r} is missing from {path}: run scripts/build_bundled_models.sh or reinstall erasure"
        )
    return path


def load_mini_clip(torch_dtype=None, folder: str | Path | None = None, text_folder: str | Path | None = None):
    """mini-clip as a ``transformers.CLIPModel`` (vision tower + mini-sd's text tower).

    Args:
        torch_dtype: dtype of the model; float32 by default.
        folder: the vision/projection folder; default: the bundled ``mini-clip``.
        text_folder: a ``CLIPTextModel`` folder; default: mini-sd's ``text_encoder``.
    """
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPConfig, CLIPModel, CLIPTextModel

    folder = Path(folder or bundled_model_path("mini-clip"))
    text_folder = Path(text_folder or bundled_model_path("mini-sd") / "text_encoder")
    dtype = torch_dtype or torch.float32
    config = CLIPConfig.from_pretrained(folder)
    model = CLIPModel(config)
    text = CLIPTextModel.from_pretrained(text_folder, torch_dtype=dtype, local_files_only=True)
    # transformers 5 flattened CLIPTextModel (no ``.text_model``); 4.x wraps the transformer
    model.text_model.load_state_dict(getattr(text, "text_model", text).state_dict())
    rest = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in rest.items()}, strict=False)
    if unexpected or any(not k.startswith("text_model.") for k in missing):
        raise RuntimeError(f"mini-clip weights do not fit: missing {missing}, unexpected {unexpected}")
    return model.to(dtype).eval()
