"""The world's object classifier: a small CNN that names the shape, colour and style.

It plays the part that an ImageNet ResNet-50 or CLIP zero-shot plays in the papers'
object-erasure evaluations: images generated from "a red circle" are classified, and
the share classified as a circle is the circle's accuracy. Heads:

- ``shape``: the single shape, or "none" for an empty image (7 classes);
- ``colour``, ``style``: of the single shape;
- ``has_shape``, ``has_colour``: independent presence probabilities, for scenes with
  several shapes ("the circle is gone, is the square beside it still there?").

Trained by ``scripts/train_world_classifier.py``; bundled in ``assets/world-classifier``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import SHAPE_CLASSES
from .scenes import COLOURS, SHAPES, STYLES

HEADS = {
    "shape": len(SHAPE_CLASSES),
    "colour": len(COLOURS),
    "style": len(STYLES),
    "has_shape": len(SHAPES),
    "has_colour": len(COLOURS),
}
LABELS = {"shape": SHAPE_CLASSES, "colour": COLOURS, "style": STYLES}


@dataclass
class ClassifierConfig:
    image_size: int = 32  # inputs of another size are resized to this
    # one stage per entry, each halving the side; the first has one 3x3 conv (at full
    # resolution a second one triples the cost for little gain), the others two
    channels: tuple[int, ...] = (32, 64, 128)


def _stage(c_in: int, c_out: int, convs: int) -> nn.Sequential:
    layers = []
    for k in range(convs):
        layers += [nn.Conv2d(c_in if k == 0 else c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


@dataclass
class Predictions:
    """Per-image predicted labels (lists of names) and probabilities (tensors)."""

    shape: list[str]
    colour: list[str]
    style: list[str]
    probs: dict[str, torch.Tensor] = field(repr=False)

    def __len__(self) -> int:
        return len(self.shape)

    def records(self) -> list[dict]:
        """One dict per image: labels, and the presence of each shape and colour."""
        out = []
        for i in range(len(self)):
            rec = {"shape": self.shape[i], "colour": self.colour[i], "style": self.style[i]}
            rec["has_shape"] = {s: float(self.probs["has_shape"][i, k]) for k, s in enumerate(SHAPES)}
            rec["has_colour"] = {c: float(self.probs["has_colour"][i, k]) for k, c in enumerate(COLOURS)}
            out.append(rec)
        return out


class WorldClassifier(nn.Module):
    """CNN over 32x32 RGB images in [0, 1], with one linear head per label."""

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = config or ClassifierConfig()
        chans = (3,) + tuple(self.config.channels)
        self.features = nn.Sequential(*(_stage(a, b, 1 if i == 0 else 2) for i, (a, b) in enumerate(zip(chans[:-1], chans[1:]))))
        self.heads = nn.ModuleDict({name: nn.Linear(chans[-1], n) for name, n in HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head for a float batch (N, 3, H, W) in [0, 1]."""
        x = self.features(images * 2 - 1)
        x = x.mean(dim=(2, 3))  # global average: shapes may be anywhere in the frame
        return {name: head(x) for name, head in self.heads.items()}

    @torch.no_grad()
    def classify(self, images) -> Predictions:
        """Predicted labels and probabilities.

        Args:
            images: float tensor (N, 3, H, W) in [0, 1], or a list of PIL images.
        """
        x = to_tensor_batch(images).to(next(self.parameters()).device, torch.float32)
        if x.shape[-1] != self.config.image_size or x.shape[-2] != self.config.image_size:
            x = F.interpolate(x, size=self.config.image_size, mode="bilinear", antialias=True, align_corners=False)
        was_training = self.training
        self.eval()
        logits = self(x.clamp(0, 1))
        self.train(was_training)
        probs = {k: (v.sigmoid() if k.startswith("has_") else v.softmax(-1)).cpu() for k, v in logits.items()}
        names = {k: [LABELS[k][int(i)] for i in probs[k].argmax(-1)] for k in LABELS}
        return Predictions(names["shape"], names["colour"], names["style"], probs)


def to_tensor_batch(images) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 1] from a tensor batch or a list of PIL images."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a (N, 3, H, W) tensor, got shape {tuple(images.shape)}")
        return images.float()
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def save_world_classifier(model: WorldClassifier, folder: str | Path) -> None:
    """Write ``model.safetensors`` (float16) and ``config.json`` into ``folder``."""
    from safetensors.torch import save_file

    from ..atomic import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    with atomic_path(folder / "config.json") as tmp:
        tmp.write_text(json.dumps({"image_size": model.config.image_size, "channels": list(model.config.channels)}, indent=2))


def load_world_classifier(device: str | torch.device = "cpu", folder: str | Path | None = None) -> WorldClassifier:
    """The bundled classifier (or the one in ``folder``), in float32 and eval mode.

    Args:
        device: where to put it.
        folder: a folder written by ``save_world_classifier``; default: the bundled one.
    """
    from safetensors.torch import load_file

    if folder is None:
        from ..assets import bundled_model_path

        folder = bundled_model_path("world-classifier")
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    model = WorldClassifier(ClassifierConfig(image_size=cfg["image_size"], channels=tuple(cfg["channels"])))
    state = load_file(str(folder / "model.safetensors"))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.to(device).eval()


@lru_cache(maxsize=1)
def _default_classifier() -> WorldClassifier:
    return load_world_classifier("cpu")


def classify(images, model: WorldClassifier | None = None) -> Predictions:
    """Classify images with ``model`` (default: the bundled classifier on the CPU).

    Args:
        images: float tensor (N, 3, H, W) in [0, 1], or a list of PIL images.
        model: a ``WorldClassifier``; the bundled one if None.
    """
    return (model or _default_classifier()).classify(images)
