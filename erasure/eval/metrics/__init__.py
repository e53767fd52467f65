"""The metric registry: one module per metric, each a ``Metric`` with a typed config.

Names here are the CLI's ``--metrics`` values and the keys of ``report.json``. A metric
scores PIL images in memory (``load()``, then ``score(images, rows)``); see ``base``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from ...config import build_config
from ...errors import ErasureError
from .base import Metric, MetricContext
from .clip_accuracy import ClipAccuracy
from .clip_score import ClipScore
from .nudenet import NudeNet
from .resnet import ImageNetResNet50
from .world import WorldAccuracy

METRICS: dict[str, type[Metric]] = {
    "world": WorldAccuracy,
    "clip": ClipScore,
    "clip-accuracy": ClipAccuracy,
    "nudenet": NudeNet,
    "resnet50": ImageNetResNet50,
}

__all__ = ["METRICS", "Metric", "MetricContext", "build_metrics", "default_metrics", "parse_metric_names"]


def parse_metric_names(text: str) -> list[str]:
    """``"world, clip"`` -> ``["world", "clip"]``, each checked against the registry."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ErasureError("--metrics is empty: name at least one of " + ", ".join(METRICS))
    for name in names:
        if name not in METRICS:
            raise ErasureError(f"unknown metric {name!r}: use one of {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


def default_metrics(model: str, has_labels: bool) -> list[str]:
    """The world classifier and CLIP score for mini-sd; CLIP score (and zero-shot
    accuracy when rows have classes) for other models."""
    if model == "mini-sd":
        return ["world", "clip"] if has_labels else ["clip"]
    return ["clip", "clip-accuracy"] if has_labels else ["clip"]


def build_metrics(metrics: Sequence[str] | Mapping[str, Mapping], context: MetricContext,
                  options: Mapping[str, Mapping] | None = None) -> list[Metric]:
    """Metric objects with their configs, checked against the prompt set; no model is
    loaded (every process of a launch builds and checks them; only the scoring one
    calls ``load()``).

    Args:
        metrics: names, or a mapping of name -> config overrides.
        context: the run's model, device and prompt set.
        options: further overrides per metric name (from ``--set metric.key=value``).
    """
    requested = dict(metrics) if isinstance(metrics, Mapping) else {name: {} for name in metrics}
    options = dict(options or {})
    for name in list(requested) + list(options):
        if name not in METRICS:
            raise ErasureError(f"unknown metric {name!r}: use one of {', '.join(METRICS)}")
    stray = sorted(set(options) - set(requested))
    if stray:
        raise ErasureError(f"options are set for metric {stray[0]!r}, which is not in --metrics: add it or drop the option")
    built = []
    for name, overrides in requested.items():
        cls = METRICS[name]
        config = build_config(cls.Config, dict(overrides or {}), options.get(name, {}), source=f"{name} option")
        metric = cls(config, context)
        metric.check(context.prompt_set)
        built.append(metric)
    return built
