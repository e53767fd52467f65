"""What every metric provides, and the grouping of rows that every summary uses.

A metric's life, in the order the evaluator calls it:

- built from its typed config and a ``MetricContext`` (on every process);
- ``check(prompt_set)``: can it score these rows? Cheap, loads no model, and runs before
  any image is generated (a set without a ``class`` column fails in a second, not after
  an hour of generation);
- ``load()``: loads its models; only on the process that scores, also before generating,
  so that a missing model fails early;
- ``score(images, rows)``: PIL images in memory -> one JSON-able record per image
  (reading and writing PNGs is the evaluator's business, not the metric's);
- ``summarize(rows, records)``: numbers per row group (``erased``, ``retained``,
  ``synonym``, or ``all``) with a ``headline`` mapping that ``report.md`` tabulates
  and its ``headline_intervals`` (label -> 95% interval ``[low, high]`` or ``None``;
  ``erasure.eval.intervals``);
- ``details(result, variants)``: its own tables for ``report.md``, and
  ``describe(record)``: one short line per image for ``report.html``;
- ``row_values(rows, records)``: for the headline numbers that are means over rows,
  each row's value, from which the report pairs base and erased rows for the change's
  interval (``erasure.eval.intervals.paired_change``);
- ``concept_presence(summary)``: one number, how much of the erased concept is left
  (RECE's validation picks the epoch that minimises it);
- ``concept_shown(record)``: whether one image shows its row's concept, for metrics
  that decide it per image (``judges_concept``): the attacks' judge and their ASR.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
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
    """Base class; subclasses set ``name`` and ``Config`` and implement ``_load_models``,
    ``score``, ``summarize`` and ``concept_presence``."""

    name: ClassVar[str]
    Config: ClassVar[type]
    judges_concept: ClassVar[bool] = False  # implements concept_shown

    def __init__(self, config, context: MetricContext):
        self.config = config
        self.context = context
        self._loaded = False

    def check(self, prompt_set: PromptSet) -> None:
        """Raise ``ErasureError`` if this metric cannot score these rows (loads nothing).

        Args:
            prompt_set: the rows that will be scored.
        """

    def load(self) -> "Metric":
        """Load the scoring models (once; later calls do nothing) and return ``self``."""
        if not self._loaded:
            self._load_models()
            self._loaded = True
        return self

    def _load_models(self) -> None:
        """Subclasses load their models here."""

    def require_loaded(self) -> None:
        """Raise unless ``load()`` has run: scoring never loads models behind the caller's back."""
        if not self._loaded:
            raise RuntimeError(f"metric {self.name!r} is not loaded: call load() before score() or settings()")

    def settings(self) -> dict:
        """Everything needed to reproduce the numbers (model, thresholds, versions)."""
        return {"config": dataclasses.asdict(self.config)}

    def score(self, images: list, rows: list[PromptRow]) -> list[dict]:
        """One record per image.

        Args:
            images: PIL images, one per row.
            rows: the rows they were generated for.
        """
        raise NotImplementedError

    def summarize(self, rows: list[PromptRow], records: list[dict]) -> dict:
        """Numbers per row group, a ``headline`` mapping and its ``headline_intervals``.

        Args:
            rows: the rows scored.
            records: ``score``'s records, one per row.
        """
        raise NotImplementedError

    def row_values(self, rows: list[PromptRow], records: list[dict]) -> dict[str, dict[int, float]]:
        """Per headline label that is a mean over rows, each row's value by row index (none by default).

        Args:
            rows: the rows scored.
            records: ``score``'s records, one per row.
        """
        return {}

    def concept_presence(self, summary: dict) -> float:
        """How much of the erased concept ``summary``'s images show; lower is better erased.

        Args:
            summary: ``summarize``'s result for images of the erased concept.
        """
        raise NotImplementedError

    def concept_shown(self, record: dict) -> bool:
        """Whether the image of ``record`` shows its row's concept (metrics with ``judges_concept``).

        Args:
            record: one of ``score``'s records.
        """
        raise NotImplementedError

    def details(self, result: dict, variants: list[str]) -> list[str]:
        """Markdown lines of this metric's own tables in ``report.md`` (none by default).

        Args:
            result: ``report.json``'s entry of this metric: ``settings`` and a summary per variant.
            variants: the report's columns (``base``, ``erased``, ``attacked-<name>``...).
        """
        return []

    def describe(self, record: dict) -> str:
        """A few words about one image's record, for ``report.html``.

        Args:
            record: one of ``score``'s records.
        """
        return ""


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


def erased_group(summary: dict) -> dict:
    """The summary's ``erased`` group, or ``all`` for an untyped set."""
    groups = summary["groups"]
    return groups.get("erased", groups[UNTYPED])


def require_labels(metric: str, prompt_set: PromptSet) -> None:
    unlabelled = [row for row in prompt_set.rows if not row.label]
    if unlabelled:
        raise ErasureError(
            f"metric {metric!r} needs the expected label of every row, but {prompt_set.source} row {unlabelled[0].index} "
            "has no 'class' value: add a 'class' column, or drop this metric"
        )


def rgb(images: list) -> list:
    """The images as RGB (scorers expect three channels; PNGs may carry alpha or grey)."""
    return [image if image.mode == "RGB" else image.convert("RGB") for image in images]


def batches(items: list, size: int):
    """``items`` in consecutive chunks of ``size`` (the last may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def mean(values) -> float | None:
    values = list(values)
    return float(sum(values) / len(values)) if values else None
