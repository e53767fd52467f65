"""CLIP zero-shot object accuracy over the prompt set's class names (MACE's protocol).

Each image is classified among the set's ``class`` values (or ``classes``) by CLIP:
softmax over ``logit_scale * cos(E_image, E_text(template.format(class)))``. MACE
used ViT-B/32 and "a photo of the {class}" (the default template); set
``clip-accuracy.model=ViT-B-32/openai`` to match its model too. Summaries (top-1, mean probability, Acc_e/Acc_s/Acc_g, H_o) are
``accuracy.accuracy_summary``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import ErasureError
from ..prompts import PromptRow, PromptSet
from .accuracy import AccuracyMetric, accuracy_record
from .base import require_labels, rgb
from .clip_models import MINI_CLIP, default_clip_for, load_clip

DEFAULT_TEMPLATE = "a photo of the {}"  # MACE's zero-shot text
MINI_CLIP_TEMPLATE = "a photo of a {}"


@dataclass
class ClipAccuracyConfig:
    model: str | None = None  # None: mini-clip for mini-sd, "ViT-L-14/openai" otherwise
    template: str | None = None  # {} is the class name; None: MACE's "a photo of the {}" ("a photo of a {}" for mini-clip)
    classes: list[str] | None = None  # None: the set's distinct class values
    batch_size: int = 32


class ClipAccuracy(AccuracyMetric):
    name = "clip-accuracy"
    Config = ClipAccuracyConfig

    @property
    def model_spec(self) -> str:
        return self.config.model or default_clip_for(self.context.model)

    @property
    def template(self) -> str:
        if self.config.template is not None:
            return self.config.template
        # mini-clip never saw "the" in its captions; "a photo of a red circle" is its phrasing
        return MINI_CLIP_TEMPLATE if self.model_spec == MINI_CLIP else DEFAULT_TEMPLATE

    @property
    def classes(self) -> list[str]:
        return list(self.config.classes or self.context.prompt_set.class_names)

    def check(self, prompt_set: PromptSet) -> None:
        require_labels(self.name, prompt_set)
        unknown = sorted({row.label for row in prompt_set.rows} - set(self.classes))
        if unknown:
            raise ErasureError(f"clip-accuracy: class {unknown[0]!r} of the prompt set is not among clip-accuracy.classes")
        if len(self.classes) < 2:
            raise ErasureError("clip-accuracy needs at least two class names to choose between: add rows of other classes")
        if "{}" not in self.template:
            raise ErasureError(f"clip-accuracy.template {self.template!r} must contain {{}} for the class name")

    def _load_models(self) -> None:
        self._clip = load_clip(self.model_spec, self.context.device)

    def settings(self) -> dict:
        self.require_loaded()
        return {**super().settings(), "clip_model": self.model_spec, **self._clip.info, "classes": self.classes,
                "texts": [self.template.format(c) for c in self.classes], "logit_scale": self._clip.logit_scale}

    def score(self, images: list, rows: list[PromptRow]) -> list[dict]:
        self.require_loaded()
        clip, classes = self._clip, self.classes
        texts = clip.text_embeddings([self.template.format(c) for c in classes])
        embeddings = clip.image_embeddings(rgb(images), self.config.batch_size)
        probs = torch.softmax(clip.logit_scale * embeddings @ texts.T, dim=-1)
        return [accuracy_record(classes[int(p.argmax())], row.label, p[classes.index(row.label)]) for row, p in zip(rows, probs)]
