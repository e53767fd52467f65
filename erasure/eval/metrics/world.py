"""The shapes world's classifier: object accuracy for the bundled mini-sd.

It plays the part of the ImageNet ResNet-50 (ESD, UCE) or CLIP zero-shot (MACE) in the
papers' object-erasure protocol: every image is classified, and the share classified as
the row's ``class`` is its accuracy. The classifier names three attributes, so a set
may erase any of them (``attribute``, default ``auto``: read from the set's classes):

- ``shape``: one of the world's shapes, or ``none`` (an empty scene);
- ``colour``: the colour of the single shape (``eval_prompts/colours``);
- ``style``: ``filled`` or ``outlined`` (``eval_prompts/styles``);
- ``pair``: shape and colour jointly, a class such as ``red circle``
  (``eval_prompts/pairs``). An image is correct only if both heads are; its predicted
  label is ``"<colour> <shape>"`` (``none`` for an empty image) and its probability the
  product of the two heads' probabilities of the expected colour and shape.

Summaries (top-1, mean probability, Acc_e/Acc_s/Acc_g, H_o) are
``accuracy.accuracy_summary``. The two attributes not scored are kept per image, for
the report's pages.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...errors import ErasureError
from ..prompts import PromptRow, PromptSet
from .accuracy import AccuracyMetric, accuracy_record
from .base import batches, require_labels, rgb


ATTRIBUTES = ("shape", "colour", "style", "pair")
HEADS = ("shape", "colour", "style")  # the classifier's heads; "pair" reads two of them


@dataclass
class WorldConfig:
    folder: str | None = None  # a classifier folder; None: the bundled world-classifier
    batch_size: int = 64
    attribute: Literal["auto", "shape", "colour", "style", "pair"] = "auto"  # what "class" names; auto: from the classes


def world_labels() -> dict[str, tuple[str, ...]]:
    """The classifier's labels per attribute (shapes with ``none``, colours, styles, and
    the pairs ``"red circle"``...)."""
    from ...world.classifier import LABELS
    from ...world.scenes import COLOURS, SHAPES

    labels = {attribute: tuple(LABELS[attribute]) for attribute in HEADS}
    labels["pair"] = tuple(pair_label(colour, shape) for shape in SHAPES for colour in COLOURS)
    return labels


def pair_label(colour: str, shape: str) -> str:
    """``"red circle"``; an empty image (shape ``none``) is ``"none"`` whatever its colour head says.

    Args:
        colour: a colour of the world.
        shape: a shape of the world, or ``none``.
    """
    return "none" if shape == "none" else f"{colour} {shape}"


def resolve_attribute(requested: str, prompt_set: PromptSet) -> str:
    """The attribute a set's classes name: ``requested``, checked, or inferred for ``auto``.

    Args:
        requested: ``"auto"``, ``"shape"``, ``"colour"``, ``"style"`` or ``"pair"``.
        prompt_set: labelled rows (every class must be a label of one attribute).
    """
    labels = world_labels()
    classes = prompt_set.class_names
    if requested != "auto":
        stray = [c for c in classes if c not in labels[requested]]
        if stray:
            raise ErasureError(f"metric 'world' scores {requested} ({', '.join(labels[requested])}), but the prompt set "
                               f"has class {stray[0]!r}: use world.attribute=auto, or a {requested} prompt set")
        return requested
    found = {}
    for name in classes:
        owner = next((a for a in ATTRIBUTES if name in labels[a]), None)
        if owner is None:
            raise ErasureError(
                f"metric 'world' classifies the shapes world (shapes, colours, styles, shape-colour pairs), but the prompt "
                f"set has class {name!r}: use it with mini-sd prompt sets (eval_prompts/shapes, colours, styles, pairs)"
            )
        found.setdefault(owner, name)
    if len(found) > 1:
        mixed = ", ".join(f"{a} {n!r}" for a, n in found.items())
        raise ErasureError(f"the prompt set mixes world attributes ({mixed}): give each attribute its own prompt set")
    return next(iter(found), "shape")  # no classes at all: the classifier's main head


class WorldAccuracy(AccuracyMetric):
    name = "world"
    Config = WorldConfig

    def __init__(self, config, context):
        super().__init__(config, context)
        self._model = None
        self._attribute = None

    def check(self, prompt_set: PromptSet) -> None:
        require_labels(self.name, prompt_set)
        self._attribute = resolve_attribute(self.config.attribute, prompt_set)

    @property
    def attribute(self) -> str:
        """The attribute scored: ``shape``, ``colour``, ``style`` or ``pair``."""
        if self._attribute is None:
            self._attribute = resolve_attribute(self.config.attribute, self.context.prompt_set)
        return self._attribute

    def _load_models(self) -> None:
        from ...world.classifier import load_world_classifier

        try:
            self._model = load_world_classifier(self.context.device, folder=self.config.folder)
        except (FileNotFoundError, OSError, KeyError) as error:
            raise ErasureError(f"the world classifier could not be loaded ({error}): reinstall erasure") from None

    def _folder(self) -> Path:
        if self.config.folder:
            return Path(self.config.folder)
        from ...assets import bundled_model_path

        return bundled_model_path("world-classifier")

    def settings(self) -> dict:
        weights = self._folder() / "model.safetensors"
        digest = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None
        labels = (f"{self.attribute} head: {', '.join(world_labels()[self.attribute])}" if self.attribute != "pair" else
                  "colour and shape heads jointly: correct only if both are")
        return {**super().settings(), "classifier": str(self._folder()), "weights_sha256": digest,
                "attribute": self.attribute, "labels": labels}

    def score(self, images: list, rows: list[PromptRow]) -> list[dict]:
        self.require_loaded()
        records = []
        for batch_images, batch_rows in zip(batches(rgb(images), self.config.batch_size), batches(rows, self.config.batch_size)):
            predictions = self._model.classify(batch_images)
            for i, row in enumerate(batch_rows):
                record = accuracy_record(*self._prediction(predictions, i, row.label))
                # every head's label is kept: the attributes not scored are shown per image
                record.update({head: getattr(predictions, head)[i] for head in HEADS if head != self.attribute})
                records.append(record)
        return records

    def _prediction(self, predictions, i: int, expected: str) -> tuple[str, str, float]:
        """(predicted label, expected label, probability of the expected label) of image ``i``."""
        labels = world_labels()
        if self.attribute != "pair":
            probability = predictions.probs[self.attribute][i, labels[self.attribute].index(expected)]
            return getattr(predictions, self.attribute)[i], expected, float(probability)
        colour, shape = expected.split(" ", 1)
        probability = (predictions.probs["colour"][i, labels["colour"].index(colour)]
                       * predictions.probs["shape"][i, labels["shape"].index(shape)])
        return pair_label(predictions.colour[i], predictions.shape[i]), expected, float(probability)
