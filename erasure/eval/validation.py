"""Quick in-memory scoring of an erased concept, for choosing between candidate edits
(RECE's epochs): generate a few images of each concept with the candidate weights and
return how much of the concept is left. Lower is better.

The scorers are the evaluator's own metrics (the world classifier, NudeNet, CLIP score),
scoring the images in memory; the images are generated as ``erase-eval`` generates them
(one CPU generator per image, seeds ``0 .. seeds-1`` for every concept), and nothing is
written to disk. Each concept is scored by its own metric (the world classifier scores a
shape concept on its shape head and a colour on its colour head), and the concepts'
scores are averaged.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import ErasureError
from ..generation import generation_settings
from .generate import generate_in_memory, swapped_parameters
from .metrics import Metric, MetricContext, build_metrics
from .prompts import PromptRow, PromptSet

MODES = {"world": "world", "nudenet": "nudenet", "clip": "clip"}  # validate= value -> metric name


def erased_concept_scorer(pipe, concepts: list[str], mode: str, seeds: int) -> Callable[[dict[str, torch.Tensor]], float]:
    """``score(weights) -> float``: how much of the concepts is left in images generated
    with ``weights`` in place of the UNet's parameters of those names (applied for the
    call only; the pipeline is restored). World classifier: % of images classified as
    the concept (Acc_e); NudeNet: % of images with an exposed-part detection; CLIP: mean
    CLIP score of the images with the concept's text.

    Args:
        pipe: the base pipeline.
        concepts: concept prompts to generate from.
        mode: ``auto`` (world classifier for mini-sd, CLIP otherwise), ``world``, ``nudenet`` or ``clip``.
        seeds: images per concept (at least 1).
    """
    model = str(pipe.name_or_path)
    name = MODES["world" if model == "mini-sd" else "clip"] if mode == "auto" else MODES.get(mode)
    if name is None:
        raise ErasureError(f"validation mode {mode!r} is unknown: use auto, {', '.join(MODES)} or none")
    if seeds < 1:
        raise ErasureError(f"validation_seeds {seeds} must be at least 1: set validation_seeds=4, or validate=none")
    scorers = [_concept_metric(name, model, pipe.device, concept, seeds) for concept in concepts]
    settings = generation_settings(pipe)

    def score(weights: dict[str, torch.Tensor]) -> float:
        # TODO(coordinator): erasure.training's swap-and-restore context manager at merge.
        with swapped_parameters(pipe.unet, weights):
            images = [generate_in_memory(pipe, rows, settings) for _, rows in scorers]
        presence = [metric.concept_presence(metric.summarize(rows, metric.score(batch, rows)))
                    for (metric, rows), batch in zip(scorers, images)]
        return sum(presence) / len(presence)

    return score


def _concept_metric(name: str, model: str, device, concept: str, seeds: int) -> tuple[Metric, list[PromptRow]]:
    """The loaded metric that scores ``seeds`` images of ``concept``, and their rows."""
    rows = [PromptRow(i, concept, seed=i, label=concept, type="erased") for i in range(seeds)]
    context = MetricContext(model, device, PromptSet(f"validation: {concept}", "RECE validation", rows))
    try:
        (metric,) = build_metrics([name], context)
    except ErasureError:  # e.g. a concept that is not a label of the world classifier
        raise ErasureError(f"the {name} metric cannot score the concept {concept!r}: validate with "
                           "--set validate=clip or validate=none") from None
    return metric.load(), rows
