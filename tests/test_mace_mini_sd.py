"""MACE on the bundled mini-sd: one shape, then three at once (slow: run with --runslow).

Targets from the issue: erased shapes <= 10% classified as themselves, the other shapes
>= 90% of their base accuracy, synonyms ("disk" for circle) <= 25%. The numbers come
from ``scripts/mace_mini_sd.py``, which prints them in full.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import erasure
from erasure.config import configs_dir
from erasure.world.scenes import SHAPES

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from mace_mini_sd import evaluation_prompts, shape_accuracy  # noqa: E402

SEEDS = 5  # x 6 colours = 30 images per shape


@pytest.fixture(scope="module")
def mini_sd(request):
    if not request.config.getoption("--runslow", default=False):
        pytest.skip("erases and generates with mini-sd for minutes; run with --runslow")
    from erasure.world.classifier import load_world_classifier

    return erasure.load_pipeline("mini-sd", device="cpu", dtype="float32"), load_world_classifier()


@pytest.mark.slow
@pytest.mark.parametrize("shapes", [["circle"], ["circle", "square", "triangle"]])
def test_mace_erases_shapes_and_keeps_the_others(mini_sd, shapes):
    pipe, classifier = mini_sd
    config = erasure.resolve_config("mace", "object", configs_dir() / "mace" / "mini-sd.yaml")
    edited = erasure.erase(pipe, "mace", shapes, "object", config)
    prompts = evaluation_prompts(shapes)
    base = shape_accuracy(pipe, classifier, prompts, SEEDS)
    erased = edited.apply(erasure.load_pipeline("mini-sd", device="cpu", dtype="float32"))
    after = shape_accuracy(erased, classifier, prompts, SEEDS)
    for shape in shapes:
        assert after[shape] <= 0.10, (shape, after)
        assert after[f"synonym:{shape}"] <= 0.25, (shape, after)
    for shape in (s for s in SHAPES if s not in shapes):
        assert after[shape] >= 0.9 * base[shape], (shape, base, after)
