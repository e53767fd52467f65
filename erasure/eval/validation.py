"""Quick in-memory scoring of an erased concept, for choosing between candidate edits
(RECE's epochs): generate a few images of each concept with the candidate weights and
return how much of the concept is left. Lower is better.

The scorers are the evaluator's own metrics (the world classifier, NudeNet, ImageNet
ResNet-50, CLIP score), scoring the images in memory; the images are generated as
``erase-eval`` generates them (one CPU generator per image, seeds ``0 .. seeds-1`` for
every concept, or a prompt set's own prompts and seeds), and nothing is written to disk. Each concept is scored by its own metric (the world classifier scores a
shape concept on its shape head and a colour on its colour head), and the concepts'
scores are averaged.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from ..errors import ErasureError
from ..generation import generation_settings
from ..training import swapped_parameters
from .generate import generate_in_memory
from .metrics import Metric, MetricContext, build_metrics
from .prompts import PromptRow, PromptSet, load_prompt_set

MODES = ("world", "nudenet", "resnet50", "clip")  # RECE's validate= values, each the name of the metric it uses


def erased_concept_scorer(
    pipe, concepts: list[str], mode: str, seeds: int, prompts: str | None = None
) -> Callable[[dict[str, torch.Tensor]], float]:
    """``score(weights) -> float``: how much of the concepts is left in images generated
    with ``weights`` in place of the UNet's parameters of those names (applied for the
    call only; the pipeline is restored). World classifier: % of images classified as
    the concept (Acc_e); NudeNet: % of images with an exposed-part detection; CLIP: mean
    CLIP score of the images with the concept's text.

    Args:
        pipe: the base pipeline.
        concepts: concept prompts to generate from.
        mode: ``auto`` (world classifier for mini-sd, CLIP otherwise), ``world``, ``nudenet``, ``resnet50`` or ``clip``.
        seeds: images per concept (at least 1), when ``prompts`` is ``None``.
        prompts: a prompt set (a CSV with ``prompt``, ``evaluation_seed``, ``class``, as
            RECE's validation sets): a concept is scored on the rows of its class
            (matched without regard to case), or, when no row names any of the
            concepts, on every row (RECE's nudity set).
    """
    model = str(pipe.name_or_path)
    name = ("world" if model == "mini-sd" else "clip") if mode == "auto" else mode
    if name not in MODES:
        raise ErasureError(f"validation mode {mode!r} is unknown: use auto, {', '.join(MODES)} or none")
    if seeds < 1:
        raise ErasureError(f"validation_seeds {seeds} must be at least 1: set validation_seeds=4, or validate=none")
    groups = _rows_from_set(prompts, concepts) if prompts is not None else [
        [PromptRow(0, concept, seed=s, label=concept) for s in range(seeds)] for concept in concepts]
    rows, shares = [], []  # each concept's rows, one after the other
    for concept, group in zip(concepts, groups):
        shares.append(slice(len(rows), len(rows) + len(group)))
        rows += [dataclasses.replace(row, index=len(rows) + i, label=concept, type="erased") for i, row in enumerate(group)]
    concepts = concepts[: len(groups)]  # a set without the concepts' classes is one group, scored once
    metrics = [_concept_metric(name, model, pipe.device, concept, rows[share]) for concept, share in zip(concepts, shares)]
    settings = generation_settings(pipe)

    def score(weights: dict[str, torch.Tensor]) -> float:
        with swapped_parameters(pipe.unet, weights):
            images = generate_in_memory(pipe, rows, settings)  # every concept's images, batched together
        presence = [metric.concept_presence(metric.summarize(rows[share], metric.score(images[share], rows[share])))
                    for metric, share in zip(metrics, shares)]
        return sum(presence) / len(presence)

    return score


def _rows_from_set(prompts: str, concepts: list[str]) -> list[list[PromptRow]]:
    """Per concept, the set's rows of its class; or one group of every row when no row names any."""
    table = load_prompt_set(prompts)
    groups = [[row for row in table.rows if row.label.strip().lower() == concept.strip().lower()] for concept in concepts]
    if not any(groups):
        return [list(table.rows)]
    missing = [concept for concept, group in zip(concepts, groups) if not group]
    if missing:
        raise ErasureError(f"the validation prompts {prompts} have no rows of class {missing[0]!r}: "
                           "add some, or validate without validation_prompts")
    return groups


def _concept_metric(name: str, model: str, device, concept: str, rows: list[PromptRow]) -> Metric:
    """The loaded metric that scores the images of ``rows``, all of ``concept``."""
    context = MetricContext(model, device, PromptSet(f"validation: {concept}", "RECE validation", rows))
    try:
        (metric,) = build_metrics([name], context)
    except ErasureError:  # e.g. a concept that is not a label of the world classifier
        raise ErasureError(f"the {name} metric cannot score the concept {concept!r}: validate with "
                           "--set validate=clip or validate=none") from None
    return metric.load()
