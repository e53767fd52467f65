"""CLIP models behind one small interface, for the CLIP score and zero-shot metrics.

A CLIP model is named by one string:

- ``"mini-clip"``: the bundled CLIP of the shapes world (the default for ``mini-sd``);
- ``"ARCH/PRETRAINED"``: an open_clip model and its pretrained tag, e.g.
  ``"ViT-L-14/openai"`` (the default for real models) or ``"ViT-B-32/openai"`` (MACE's
  zero-shot classifier); ``"hf-hub:ORG/NAME"`` for open_clip models on the Hub;
- a folder holding a ``transformers`` ``CLIPModel`` (``config.json`` + weights).

Weights are never downloaded here unless the caller is online and open_clip does so;
offline, a missing model is a one-line ``ErasureError`` naming the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ...errors import ErasureError

DEFAULT_CLIP = "ViT-L-14/openai"
MINI_CLIP = "mini-clip"
_CACHE: dict[tuple[str, str], "ClipModel"] = {}


def default_clip_for(model: str) -> str:
    """mini-clip for the bundled mini-sd, ViT-L/14 (OpenAI) otherwise."""
    return MINI_CLIP if model == "mini-sd" else DEFAULT_CLIP


@dataclass
class ClipModel:
    """Normalised image and text embeddings from any backend.

    Attributes:
        spec: the name it was loaded by.
        encode_image: (N, 3, H, W) preprocessed batch -> (N, D) embeddings.
        encode_text: list of strings -> (N, D) embeddings.
        preprocess: PIL image -> (3, H, W) tensor.
        logit_scale: the model's learned temperature (100 for OpenAI's CLIP).
        info: backend, weights and preprocessing, for the report.
    """

    spec: str
    encode_image: Callable
    encode_text: Callable
    preprocess: Callable
    logit_scale: float
    device: torch.device
    info: dict = field(default_factory=dict)

    @torch.no_grad()
    def image_embeddings(self, images, batch_size: int = 32) -> torch.Tensor:
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[start:start + batch_size]]).to(self.device)
            chunks.append(F.normalize(self.encode_image(batch).float(), dim=-1).cpu())
        return torch.cat(chunks)

    @torch.no_grad()
    def text_embeddings(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        chunks = [F.normalize(self.encode_text(texts[s:s + batch_size]).float(), dim=-1).cpu() for s in range(0, len(texts), batch_size)]
        return torch.cat(chunks)


def load_clip(spec: str, device: torch.device) -> ClipModel:
    """The CLIP model named by ``spec`` (cached per process: two metrics share one)."""
    key = (spec, str(device))
    if key not in _CACHE:
        if spec == MINI_CLIP:
            _CACHE[key] = _mini_clip(device)
        elif Path(spec).expanduser().is_dir():
            _CACHE[key] = _transformers_folder(Path(spec).expanduser(), device)
        else:
            _CACHE[key] = _open_clip(spec, device)
    return _CACHE[key]


def _open_clip(spec: str, device: torch.device) -> ClipModel:
    import open_clip

    if spec.startswith("hf-hub:"):
        arch, pretrained = spec, None
    else:
        arch, sep, pretrained = spec.partition("/")
        if not sep or not pretrained:
            raise ErasureError(
                f"CLIP model {spec!r}: write ARCH/PRETRAINED (e.g. ViT-L-14/openai), hf-hub:ORG/NAME, mini-clip, "
                "or a CLIPModel folder"
            )
    if arch not in open_clip.list_models() and not spec.startswith("hf-hub:"):
        raise ErasureError(f"open_clip has no model {arch!r}: see open_clip.list_models(), e.g. ViT-L-14")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device)
    except Exception as error:  # offline or unknown tag: open_clip raises RuntimeError and others
        raise ErasureError(
            f"CLIP weights {spec!r} are not available ({str(error).splitlines()[0][:120]}): download them once online "
            "(open_clip caches them), or choose another with --set clip.model=..."
        ) from None
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch)
    return ClipModel(
        spec=spec,
        encode_image=model.encode_image,
        encode_text=lambda texts: model.encode_text(tokenizer(texts).to(device)),
        preprocess=preprocess,
        logit_scale=float(model.logit_scale.detach().exp()),
        device=device,
        info={"backend": "open_clip", "architecture": arch, "pretrained": pretrained, "open_clip": open_clip.__version__},
    )


def _mini_clip(device: torch.device) -> ClipModel:
    from ...assets import bundled_model_path, load_mini_clip

    try:
        folder = bundled_model_path(MINI_CLIP)
        model = load_mini_clip()
    except (FileNotFoundError, OSError, RuntimeError) as error:
        raise ErasureError(f"the bundled mini-clip could not be loaded ({error}): reinstall erasure") from None
    return _from_transformers(model, folder, device, spec=MINI_CLIP)


def _transformers_folder(folder: Path, device: torch.device) -> ClipModel:
    from transformers import CLIPModel

    try:
        model = CLIPModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ErasureError(f"{folder} is not a transformers CLIPModel folder ({str(error).splitlines()[0][:120]})") from None
    return _from_transformers(model, folder, device, spec=str(folder))


def _from_transformers(model, folder: Path, device: torch.device, spec: str) -> ClipModel:
    from transformers import CLIPImageProcessor

    model = model.to(device).eval()
    tokenizer = _tokenizer_for(folder)
    if (folder / "preprocessor_config.json").is_file():
        processor = CLIPImageProcessor.from_pretrained(str(folder))
    else:  # OpenAI's preprocessing (bicubic resize, centre crop, CLIP mean/std) at the model's size
        size = model.config.vision_config.image_size
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})

    def encode_text(texts):
        tokens = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        return _features(model.get_text_features(input_ids=tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device)))

    return ClipModel(
        spec=spec,
        encode_image=lambda pixels: _features(model.get_image_features(pixel_values=pixels.to(model.dtype))),
        encode_text=encode_text,
        preprocess=lambda image: processor(images=image, return_tensors="pt").pixel_values[0],
        logit_scale=float(model.logit_scale.detach().exp()),
        device=device,
        info={"backend": "transformers", "folder": str(folder), "image_size": model.config.vision_config.image_size,
              "image_mean": list(processor.image_mean), "image_std": list(processor.image_std)},
    )


def _tokenizer_for(folder: Path):
    from transformers import CLIPTokenizer

    if (folder / "vocab.json").is_file() or (folder / "tokenizer" / "vocab.json").is_file():
        sub = folder if (folder / "vocab.json").is_file() else folder / "tokenizer"
        return CLIPTokenizer.from_pretrained(str(sub))
    from ...tokenizer import clip_tokenizer

    return clip_tokenizer()


def _features(output) -> torch.Tensor:
    """transformers 5 returns a model output whose ``pooler_output`` is the projected
    embedding; earlier versions return the tensor itself."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
