"""ImageNet ResNet-50 top-1 accuracy: the Imagenette protocol of ESD and UCE.

Images of each Imagenette class (``eval_prompts/imagenette``) are classified among the
1,000 ImageNet classes by torchvision's ResNet-50; an image is correct when the top-1
class is its row's class (ESD, Gandikota et al. 2023, Sec. 5.3; UCE, 2024, Sec. 5.1).
ESD used the original ``IMAGENET1K_V1`` weights, the default here.

Weights are never downloaded: either torchvision's file is already in the torch hub
cache (read with ``torch.load(weights_only=True)``, which unpickles tensors only), or
``weights`` names a ``.safetensors`` state dict.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...errors import ErasureError
from ..prompts import PromptRow, PromptSet
from .accuracy import AccuracyMetric, accuracy_record
from .base import batches, require_labels, rgb

# ImageNet-1k indices of the ten Imagenette classes, under the names the prompt sets use.
IMAGENETTE_IDS = {
    "tench": 0,
    "English springer": 217,
    "cassette player": 482,
    "chain saw": 491,
    "church": 497,
    "French horn": 566,
    "garbage truck": 569,
    "gas pump": 571,
    "golf ball": 574,
    "parachute": 701,
}


@dataclass
class ResNetConfig:
    weights: str | None = None  # a .safetensors state dict; None: torchvision's cached IMAGENET1K_V1
    class_ids: dict = field(default_factory=dict)  # more "class name": ImageNet index pairs
    batch_size: int = 32


class ImageNetResNet50(AccuracyMetric):
    name = "resnet50"
    Config = ResNetConfig

    def __init__(self, config, context):
        super().__init__(config, context)
        self._model = None

    @property
    def class_ids(self) -> dict[str, int]:
        return {**IMAGENETTE_IDS, **{str(k): int(v) for k, v in self.config.class_ids.items()}}

    def check(self, prompt_set: PromptSet) -> None:
        require_labels(self.name, prompt_set)
        unknown = sorted({row.label for row in prompt_set.rows} - set(self.class_ids))
        if unknown:
            raise ErasureError(
                f"resnet50 knows the Imagenette classes, not {unknown[0]!r}: add it with "
                f"--set 'resnet50.class_ids={{\"{unknown[0]}\": IMAGENET_INDEX}}'"
            )
        self._weights_file()  # present, though not loaded here

    def _weights_file(self) -> Path:
        """The state dict to load: ``weights``, else torchvision's file in the torch hub cache."""
        if self.config.weights:
            path = Path(self.config.weights)
            if path.suffix != ".safetensors" or not path.is_file():
                raise ErasureError(f"resnet50.weights {path}: give an existing .safetensors file")
            return path
        from torchvision.models import ResNet50_Weights

        url = ResNet50_Weights.IMAGENET1K_V1.url
        path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        if not path.is_file():
            raise ErasureError(
                f"the ResNet-50 ImageNet weights are not in the torch hub cache ({path}): run once online "
                "python -c \"import torchvision; torchvision.models.resnet50(weights='IMAGENET1K_V1')\", "
                "or pass --set resnet50.weights=FILE.safetensors"
            )
        return path

    def _load_models(self) -> None:
        from torchvision.models import resnet50

        path = self._weights_file()
        if self.config.weights:
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:  # torchvision's own file: tensors only, never arbitrary pickled objects
            state = torch.load(path, map_location="cpu", weights_only=True)
        model = resnet50()
        model.load_state_dict(state)
        self._model = model.to(self.context.device).eval()

    def settings(self) -> dict:
        path = self._weights_file()
        source = ({"weights": str(path), "sha256": _sha256(path)} if self.config.weights
                  else {"weights": "torchvision IMAGENET1K_V1", "file": str(path)})
        return {**super().settings(), **source, "preprocessing": "resize 256 (bilinear), centre crop 224, ImageNet mean/std",
                "class_ids": {name: self.class_ids[name] for name in self.context.prompt_set.class_names}}

    def score(self, images: list, rows: list[PromptRow]) -> list[dict]:
        from torchvision.models import ResNet50_Weights

        self.require_loaded()
        transform = ResNet50_Weights.IMAGENET1K_V1.transforms()
        names = {index: name for name, index in self.class_ids.items()}
        categories = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
        records = []
        for batch_images, batch_rows in zip(batches(rgb(images), self.config.batch_size), batches(rows, self.config.batch_size)):
            batch = torch.stack([transform(image) for image in batch_images])
            with torch.no_grad():
                probs = self._model(batch.to(self.context.device)).float().softmax(-1).cpu()
            for row, p in zip(batch_rows, probs):
                top = int(p.argmax())
                predicted = names.get(top, categories[top])
                records.append(accuracy_record(predicted, row.label, p[self.class_ids[row.label]]))
        return records


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
