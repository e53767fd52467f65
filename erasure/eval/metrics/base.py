"""What every metric provides, and the grouping of rows that every summary uses.

A metric is built from its typed config and a ``MetricContext``; ``check`` runs before
any image is generated (a set without a ``class`` column fails in a second, not after an
hour of generation); ``score`` turns images into one JSON-able record per image;
``summarize`` turns records into numbers per row group (``erased``, ``retained``,
``synonym``, or ``all``), with a ``headline`` mapping that ``report.md`` tabulates.
Heavy models load on first use, and only on the process that scores.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ...errors import ErasureError
from ..prompts import UNTYPED, PromptRow, PromptSet


@dataclass
class MetricContext:
    """What a metric may need to know about the run.

    Attributes:
        model: the base model's name (``"mini-sd"`` selects the bundled scorers).
        device: where to run scoring models.
        prompt_set: the rows being evaluated (class names come from here).
    """

    model: str
    device: torch.device
    prompt_set: PromptSet


class Metric:
    """Base class; subclasses set ``name`` and ``Config`` and implement ``score``/``summarize``."""

    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, config, context: MetricContext):
        self.config = config
        self.context = context

    def check(self, prompt_set: PromptSet) -> None:
        """Raise ``ErasureError`` if this metric cannot score these rows."""

    def settings(self) -> dict:
        """Everything needed to reproduce the numbers (model, thresholds, versions)."""
        return {"config": dataclasses.asdict(self.config)}

    def score(self, paths: list[Path], rows: list[PromptRow]) -> list[dict]:
        raise NotImplementedError

    def summarize(self, rows: list[PromptRow], records: list[dict]) -> dict:
        raise NotImplementedError


def groups_of(rows: list[PromptRow]) -> dict[str, list[int]]:
    """Positions of rows per group, ``erased``/``retained``/``synonym`` first, then
    any other types, then ``all`` (every row) when the set has typed rows or none."""
    groups: dict[str, list[int]] = {}
    for position, row in enumerate(rows):
        if row.type:
            groups.setdefault(row.type, []).append(position)
    order = [g for g in ("erased", "retained", "synonym") if g in groups] + sorted(set(groups) - {"erased", "retained", "synonym"})
    ordered = {g: groups[g] for g in order}
    ordered[UNTYPED] = list(range(len(rows)))
    return ordered


def require_labels(metric: str, prompt_set: PromptSet) -> None:
    unlabelled = [row for row in prompt_set.rows if not row.label]
    if unlabelled:
        raise ErasureError(
            f"metric {metric!r} needs the expected label of every row, but {prompt_set.source} row {unlabelled[0].index} "
            "has no 'class' value: add a 'class' column, or drop this metric"
        )


def load_images(paths: list[Path]):
    from PIL import Image

    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


def mean(values) -> float | None:
    values = list(values)
    return float(sum(values) / len(values)) if values else None
