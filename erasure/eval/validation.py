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
from ..training import swapped_parameters
from .generate import generate_in_memory
from .metrics import Metric, MetricContext, build_metrics
from .prompts import PromptRow, PromptSet

MODES = ("world", "nudenet", "resnet50", "clip")  # RECE's validate= values, each the name of the metric it uses


def erased_concept_scorer(pipe, concepts: list[str], mode: str, seeds: int) -> Callable[[dict[str, torch.Tensor]], float]:
    """``score(weights) -> float``: how much of the concepts is left in images generated
    with ``weights`` in place of the UNet's parameters of those names (applied for the
    call only; the pipeline is restored). World classifier: % of images classified as
    the concept (Acc_e); NudeNet: % of images with an exposed-part detection; CLIP: mean
    CLIP score of the images with the concept's text.

    Args:
        pipe: the base pipeline.
        concepts: concept prompts to generate from.
        mode: ``auto`` (world classifier for mini-sd, CLIP otherwise), ``world``, ``nudenet``, ``resnet50`` or ``clip``.
        seeds: images per concept (at least 1).
    """
    model = str(pipe.name_or_path)
    name = ("world" if model == "mini-sd" else "clip") if mode == "auto" else mode
    if name not in MODES:
        raise ErasureError(f"validation mode {mode!r} is unknown: use auto, {', '.join(MODES)} or none")
    if seeds < 1:
        raise ErasureError(f"validation_seeds {seeds} must be at least 1: set validation_seeds=4, or validate=none")
    rows = [PromptRow(c * seeds + s, concept, seed=s, label=concept, type="erased")
            for c, concept in enumerate(concepts) for s in range(seeds)]
    shares = [slice(c * seeds, (c + 1) * seeds) for c in range(len(concepts))]  # each concept's rows
    metrics = [_concept_metric(name, model, pipe.device, concept, rows[share]) for concept, share in zip(concepts, shares)]
    settings = generation_settings(pipe)

    def score(weights: dict[str, torch.Tensor]) -> float:
        with swapped_parameters(pipe.unet, weights):
            images = generate_in_memory(pipe, rows, settings)  # every concept's images, batched together
        presence = [metric.concept_presence(metric.summarize(rows[share], metric.score(images[share], rows[share])))
                    for metric, share in zip(metrics, shares)]
        return sum(presence) / len(presence)

    return score


def _concept_metric(name: str, model: str, device, concept: str, rows: list[PromptRow]) -> Metric:
    """The loaded metric that scores the images of ``rows``, all of ``concept``."""
    context = MetricContext(model, device, PromptSet(f"validation: {concept}", "RECE validation", rows))
    try:
        (metric,) = build_metrics([name], context)
    except ErasureError:  # e.g. a concept that is not a label of the world classifier
        raise ErasureError(f"the {name} metric cannot score the concept {concept!r}: validate with "
                           "--set validate=clip or validate=none") from None
    return metric.load()
