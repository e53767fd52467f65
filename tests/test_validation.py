"""RECE's validation scorer (``erasure.eval.validation``) on the bundled mini-sd: the
evaluator's own metrics scoring images in memory, the weights swapped in for the call
only, and the number it returns the one the old scorer computed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import erasure
from erasure.errors import ErasureError
from erasure.eval.prompts import load_prompt_set
from erasure.eval.validation import erased_concept_scorer
from erasure.generation import generation_settings

ASSETS = Path(erasure.__file__).parent / "assets"
pytestmark = pytest.mark.skipif(not (ASSETS / "world-classifier" / "model.safetensors").is_file(),
                                reason="the bundled world classifier is not built yet")
SEEDS = 4


@pytest.fixture(scope="module")
def pipe():
    return erasure.load_pipeline("mini-sd", device="cpu")


@pytest.fixture(scope="module")
def circle_erased(pipe):
    return erasure.erase(pipe, "uce", "circle").tensors


def _unet_state(pipe):
    return {name: value.clone() for name, value in pipe.unet.state_dict().items()}


def test_world_score_is_the_share_classified_as_the_concept_and_drops_after_erasure(pipe, circle_erased):
    from erasure.world.classifier import classify

    score = erased_concept_scorer(pipe, ["circle"], "auto", SEEDS)  # auto: the world classifier on mini-sd
    before = _unet_state(pipe)
    base = score({})
    erased = score(circle_erased)
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())  # restored after each call

    # what the scorer replaced: one pipeline call of the concept, seeds 0..n-1, classified directly
    settings = generation_settings(pipe)
    images = pipe(["circle"] * SEEDS, **settings.pipeline_kwargs(),
                  generator=[torch.Generator().manual_seed(s) for s in range(SEEDS)]).images
    direct = 100.0 * sum(label == "circle" for label in classify(images).shape) / SEEDS
    assert base == pytest.approx(direct)
    assert base >= 75.0 and erased < base  # mini-sd draws circles; UCE's edit removes most


def test_concepts_of_different_world_attributes_are_scored_each_on_its_own_head(pipe):
    score = erased_concept_scorer(pipe, ["circle", "purple"], "world", 2)
    assert 0.0 <= score({}) <= 100.0


def test_nudenet_scores_the_share_of_images_with_detections(pipe):
    assert erased_concept_scorer(pipe, ["circle"], "nudenet", 2)({}) == 0.0  # shapes, not people


@pytest.mark.parametrize("concepts, mode, seeds, message", [
    (["airplane"], "world", 2, "the world metric cannot score the concept 'airplane': validate with --set validate=clip"),
    (["circle"], "fid", 2, "validation mode 'fid' is unknown: use auto, world, nudenet, resnet50, clip or none"),
    (["circle"], "world", 0, "validation_seeds 0 must be at least 1"),
])
def test_unusable_validation_settings_name_the_fix(pipe, concepts, mode, seeds, message):
    with pytest.raises(ErasureError, match=message):
        erased_concept_scorer(pipe, concepts, mode, seeds)


def test_a_validation_prompt_set_scores_each_concept_on_the_rows_of_its_class(pipe, tmp_path):
    # RECE's authors validate on a CSV of prompts, seeds and classes, written by pandas with
    # its unnamed index column first, which must not be read as a guidance column.
    table = tmp_path / "validation.csv"
    table.write_text(",case_number,prompt,evaluation_seed,class\n"
                     "0,0,circle,0,Circle\n1,1,square,5,square\n2,2,circle,1,circle\n")
    assert [row.guidance for row in load_prompt_set(table).rows] == [None, None, None]  # the model's default
    from_set = erased_concept_scorer(pipe, ["circle"], "world", 99, prompts=str(table))
    by_name = erased_concept_scorer(pipe, ["circle"], "world", 2)  # the same two images: "circle", seeds 0 and 1
    assert from_set({}) == by_name({})
    with pytest.raises(ErasureError, match="no rows of class 'star'"):
        erased_concept_scorer(pipe, ["circle", "star"], "world", 1, prompts=str(table))
    # A set whose classes are none of the concepts (the authors' nudity set): every row is scored.
    unlabelled = tmp_path / "inappropriate.csv"
    unlabelled.write_text("prompt,evaluation_seed,class\na red circle,0,Hate\na blue square,1,Harm\n")
    assert erased_concept_scorer(pipe, ["nudity"], "nudenet", 1, prompts=str(unlabelled))({}) == 0.0
