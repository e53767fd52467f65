"""The shapes world's classifier: object accuracy for the bundled mini-sd.

It plays the part of the ImageNet ResNet-50 (ESD, UCE) or CLIP zero-shot (MACE) in the
papers' object-erasure protocol: every image is classified as one of the world's shapes
or ``none`` (an empty scene), and the share classified as the row's ``class`` is its
accuracy. Summaries (top-1, mean probability, Acc_e/Acc_s/Acc_g, H_o) are
``accuracy.accuracy_summary``. Predicted colour and style are kept per image, for the
report's pages.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ...errors import ErasureError
from ..prompts import PromptRow, PromptSet
from .accuracy import accuracy_record, accuracy_summary
from .base import Metric, load_images, require_labels


@dataclass
class WorldConfig:
    folder: str | None = None  # a classifier folder; None: the bundled world-classifier
    batch_size: int = 64


class WorldAccuracy(Metric):
    name = "world"
    Config = WorldConfig

    def __init__(self, config, context):
        super().__init__(config, context)
        self._model = None

    def check(self, prompt_set: PromptSet) -> None:
        from ...world.data import SHAPE_CLASSES

        require_labels(self.name, prompt_set)
        unknown = sorted({row.label for row in prompt_set.rows} - set(SHAPE_CLASSES))
        if unknown:
            raise ErasureError(
                f"metric 'world' classifies the shapes world ({', '.join(SHAPE_CLASSES)}), but the prompt set has class "
                f"{unknown[0]!r}: use it with mini-sd prompt sets (eval_prompts/shapes)"
            )
        self._load()

    def _load(self):
        if self._model is None:
            from ...world.classifier import load_world_classifier

            try:
                self._model = load_world_classifier(self.context.device, folder=self.config.folder)
            except (FileNotFoundError, OSError, KeyError) as error:
                raise ErasureError(f"the world classifier could not be loaded ({error}): reinstall erasure") from None
        return self._model

    def _folder(self) -> Path:
        if self.config.folder:
            return Path(self.config.folder)
        from ...assets import bundled_model_path

        return bundled_model_path("world-classifier")

    def settings(self) -> dict:
        weights = self._folder() / "model.safetensors"
        digest = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None
        return {**super().settings(), "classifier": str(self._folder()), "weights_sha256": digest,
                "labels": "shape head: the six shapes and 'none'"}

    def score(self, paths: list[Path], rows: list[PromptRow]) -> list[dict]:
        from ...world.data import SHAPE_CLASSES

        model = self._load()
        records = []
        for start in range(0, len(paths), self.config.batch_size):
            predictions = model.classify(load_images(paths[start:start + self.config.batch_size]))
            for i, row in enumerate(rows[start:start + self.config.batch_size]):
                probability = predictions.probs["shape"][i, SHAPE_CLASSES.index(row.label)]
                record = accuracy_record(predictions.shape[i], row.label, probability)
                record.update(colour=predictions.colour[i], style=predictions.style[i])
                records.append(record)
        return records

    def summarize(self, rows: list[PromptRow], records: list[dict]) -> dict:
        return accuracy_summary(rows, records)
