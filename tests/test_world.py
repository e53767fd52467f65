"""The shapes world: determinism, masks against labels, captions, evaluation prompts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from erasure.world import COLOURS, SHAPES, STYLES, SYNONYMS, render_scene, sample_scene
from erasure.world.captions import (
    caption,
    caption_with_mentions,
    encode_mentions,
    encode_scene,
    matches,
    pair_prompts,
    shape_prompts,
    synonym_prompts,
)
from erasure.world.data import NONE_SHAPE, render_dataset, scene_labels
from erasure.world.scenes import COLOUR_JITTER, COLOUR_RGB


def test_same_seed_same_scene_pixels_and_masks():
    a, b = sample_scene(np.random.default_rng(7)), sample_scene(np.random.default_rng(7))
    assert a == b
    (img_a, masks_a), (img_b, masks_b) = render_scene(a), render_scene(b)
    assert np.array_equal(np.asarray(img_a), np.asarray(img_b))
    assert np.array_equal(masks_a, masks_b)
    assert sample_scene(np.random.default_rng(8)) != a


def test_dataset_items_do_not_depend_on_dataset_size():
    small, large = render_dataset(5, seed=3), render_dataset(8, seed=3)
    assert small.scenes == large.scenes[:5]
    assert np.array_equal(small.images, large.images[:5])


@pytest.mark.parametrize("seed", range(40))
def test_masks_match_objects_and_colours(seed):
    scene = sample_scene(np.random.default_rng(seed))
    image, masks = render_scene(scene, 32)
    pixels = np.asarray(image).astype(int)
    background = np.asarray(render_scene(replace(scene, objects=()), 32)[0]).astype(int)
    assert image.size == (32, 32) and masks.shape == (len(scene.objects), 32, 32)
    for obj, mask in zip(scene.objects, masks):
        assert mask.sum() >= 6, f"{obj.shape} covers too few pixels"
        # a masked pixel is at least half paint, so nearer the paint than the background
        to_paint = np.abs(pixels[mask] - np.array(obj.rgb)).sum(-1)
        to_background = np.abs(pixels[mask] - background[mask]).sum(-1)
        assert (to_paint <= to_background + 3).all()
        base = np.array(COLOUR_RGB[obj.colour])
        assert np.abs(np.array(obj.rgb) - base).max() <= COLOUR_JITTER
    if len(masks) > 1:
        assert masks.sum(0).max() == 1, "objects must not overlap"


def test_filled_shapes_cover_more_than_outlined():
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        filled = sample_scene(rng, 1, shape=shape, style="filled", size="large")
        outlined = replace(filled, objects=(replace(filled.objects[0], style="outlined"),))
        assert render_scene(filled)[1].sum() > 1.3 * render_scene(outlined)[1].sum()


def test_labels():
    rng = np.random.default_rng(0)
    empty = scene_labels(sample_scene(rng, 0))
    assert empty["shape"] == NONE_SHAPE and empty["colour"] == -1 and empty["has_shape"].sum() == 0
    single = sample_scene(rng, 1, shape="star", colour="blue", style="outlined")
    labels = scene_labels(single)
    assert (labels["shape"], labels["colour"], labels["style"]) == (SHAPES.index("star"), COLOURS.index("blue"), STYLES.index("outlined"))
    multi = scene_labels(sample_scene(rng, 3))
    assert multi["shape"] == -1 and 1 <= multi["has_shape"].sum() <= 3


def test_captions_use_synonyms_and_name_the_objects():
    rng = np.random.default_rng(0)
    texts = [caption(sample_scene(rng, 1, shape="circle"), rng) for _ in range(400)]
    for word in ["circle"] + SYNONYMS["circle"]:
        assert any(word in t for t in texts), word
    texts = [caption(sample_scene(rng, 2, shape="star", colour="red"), rng) for _ in range(50)]
    assert all(sum(t.count(w) for w in ["star"] + SYNONYMS["star"]) == 2 for t in texts)
    empties = {caption(sample_scene(rng, 0), rng) for _ in range(100)}
    assert "a blank canvas" in empties and not any(s in t for s in SHAPES for t in empties)


def test_synonyms_never_contain_the_concept_word():
    for shape, words in SYNONYMS.items():
        assert all(shape not in w for w in words)


def test_every_caption_matches_its_own_scene():
    rng = np.random.default_rng(1)
    scenes = [sample_scene(rng) for _ in range(300)]
    mentions = [caption_with_mentions(s, rng)[1] for s in scenes]
    m = matches(np.stack([encode_mentions(x) for x in mentions]), np.stack([encode_scene(s) for s in scenes]))
    assert m.diagonal().all()
    assert m.mean() < 0.5  # and captions are specific


def test_evaluation_prompts():
    assert shape_prompts("circle")[:2] == ["a red circle", "a green circle"]
    assert "an orange circle" in shape_prompts("circle")
    assert "a red disk" in synonym_prompts("circle") and not any("circle" in p for p in synonym_prompts("circle"))
    assert pair_prompts("circle")[0] == "a red circle and a green square"
