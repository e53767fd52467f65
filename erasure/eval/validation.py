"""Quick in-memory scoring of an erased concept, for choosing between candidate edits
(RECE's epochs): generate a few images of the concept, return how much of it is left.

Lower is better. The scorers are the evaluator's own (world classifier, NudeNet, CLIP);
only the images stay in memory instead of on disk.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..adapters import adapter_for
from ..errors import ErasureError
from .generate import generation_settings


def erased_concept_scorer(pipe, concepts: list[str], mode: str, seeds: int) -> Callable[[dict], float]:
    """``score(cross_attention_weights) -> float``: the share of the concept left in images
    generated with those weights (applied temporarily; the pipeline is restored).

    Args:
        pipe: the base pipeline.
        concepts: concept prompts to generate from.
        mode: ``auto`` (world classifier for mini-sd, CLIP otherwise), ``world``, ``nudenet`` or ``clip``.
        seeds: images per concept.
    """
    model = str(pipe.name_or_path)
    if mode == "auto":
        mode = "world" if model == "mini-sd" else "clip"
    score_images = {"world": _world_scorer, "nudenet": _nudenet_scorer, "clip": _clip_scorer}[mode](pipe, concepts)
    settings = generation_settings(pipe, model)
    projections = adapter_for(pipe).cross_attention_weights()

    @torch.no_grad()
    def score(weights: dict[str, torch.Tensor]) -> float:
        saved = {name: p.detach().clone() for name, p in projections.items()}
        try:
            for name, value in weights.items():
                projections[name].copy_(value)
            images = {
                concept: pipe(
                    [concept] * seeds,
                    num_inference_steps=settings.num_inference_steps,
                    guidance_scale=settings.guidance_scale,
                    height=settings.resolution,
                    width=settings.resolution,
                    generator=[torch.Generator().manual_seed(s) for s in range(seeds)],
                ).images
                for concept in concepts
            }
        finally:
            for name, value in saved.items():
                projections[name].copy_(value)
        return score_images(images)

    return score


def _world_scorer(pipe, concepts: list[str]):
    from ..world.classifier import LABELS, load_world_classifier

    heads = {concept: next((h for h, labels in LABELS.items() if concept in labels), None) for concept in concepts}
    unknown = [c for c, h in heads.items() if h is None]
    if unknown:
        raise ErasureError(
            f"the world classifier has no label {unknown[0]!r}: validate with --set validate=clip or validate=none"
        )
    classifier = load_world_classifier(pipe.device)

    def score(images: dict) -> float:
        hits = total = 0
        for concept, batch in images.items():
            predicted = getattr(classifier.classify(batch), heads[concept])
            hits += sum(label == concept for label in predicted)
            total += len(predicted)
        return hits / total

    return score


def _nudenet_scorer(pipe, concepts: list[str]):
    from nudenet import NudeDetector

    from .metrics.nudenet import EXPOSED_LABELS, NudeNetConfig

    detector, threshold = NudeDetector(), NudeNetConfig().threshold

    def score(images: dict) -> float:
        flagged = total = 0
        with tempfile.TemporaryDirectory() as folder:
            for i, image in enumerate(im for batch in images.values() for im in batch):
                path = Path(folder) / f"{i}.png"
                image.save(path)
                found = detector.detect(str(path))
                flagged += any(d["class"] in EXPOSED_LABELS and d["score"] >= threshold for d in found)
                total += 1
        return flagged / total

    return score


def _clip_scorer(pipe, concepts: list[str]):
    from .metrics.clip_models import default_clip_for, load_clip

    clip = load_clip(default_clip_for(str(pipe.name_or_path)), pipe.device)
    texts = clip.text_embeddings(concepts)

    def score(images: dict) -> float:
        similarities = [
            (clip.image_embeddings(batch) @ texts[i]).clamp(min=0).mean().item()
            for i, batch in enumerate(images.values())
        ]
        return 100 * sum(similarities) / len(similarities)

    return score
