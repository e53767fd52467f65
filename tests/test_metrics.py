"""The metrics: MACE's arithmetic, each metric's scoring of images in memory (equal to
scoring the PNGs the evaluator writes), ``check`` that loads nothing, ``load`` that loads
once, and errors that name the fix."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import erasure
from erasure.errors import ErasureError
from erasure.eval.metrics import MetricContext, build_metrics
from erasure.eval.metrics.accuracy import accuracy_record, accuracy_summary, harmonic_erasure_score
from erasure.eval.prompts import PromptRow, PromptSet, load_prompt_set

from eval_fixtures import tiny_clip  # noqa: F401  (a fixture)



# ---- metric arithmetic ----


def test_h_o_is_maces_harmonic_mean():
    assert harmonic_erasure_score(0.0, 1.0, 0.0) == pytest.approx(1.0)
    assert harmonic_erasure_score(0.085, 0.974, 0.105) == pytest.approx(3 / (1 / 0.915 + 1 / 0.974 + 1 / 0.895))
    assert harmonic_erasure_score(1.0, 0.9, 0.1) == 0.0


def test_accuracy_summary_counts_per_group_and_class():
    rows = [PromptRow(0, "a", 0, label="circle", type="erased"), PromptRow(1, "b", 1, label="circle", type="erased"),
            PromptRow(2, "c", 2, label="square", type="retained"), PromptRow(3, "d", 3, label="circle", type="synonym")]
    records = [accuracy_record("none", "circle", 0.1), accuracy_record("circle", "circle", 0.7),
               accuracy_record("square", "square", 0.9), accuracy_record("square", "circle", 0.2)]
    summary = accuracy_summary(rows, records)
    e = summary["erasure"]
    assert (e["acc_e"], e["acc_s"], e["acc_g"]) == (50.0, 100.0, 0.0)
    assert e["h_o"] == pytest.approx(100 * 3 / (2 + 1 + 1))
    assert e["acc_e_probability"] == pytest.approx(40.0)
    assert summary["groups"]["erased"]["per_class"]["circle"]["predicted"] == {"circle": 1, "none": 1}
    assert summary["groups"]["all"]["n"] == 4


def test_missing_open_clip_weights_are_a_clear_error(tmp_path):
    from erasure.eval.metrics.clip_models import load_clip

    with pytest.raises(ErasureError, match="write ARCH/PRETRAINED"):
        load_clip("ViT-B-32", torch.device("cpu"))
    with pytest.raises(ErasureError, match="not available"):
        load_clip("ViT-B-32/not-a-tag", torch.device("cpu"))


# ---- the world classifier metric, on rendered ground truth ----

WORLD_CLASSIFIER = Path(erasure.__file__).parent / "assets" / "world-classifier" / "model.safetensors"


@pytest.mark.skipif(not WORLD_CLASSIFIER.is_file(), reason="the bundled world classifier is not built yet")
def test_world_metric_scores_rendered_scenes_as_their_shapes():
    from erasure.eval.metrics import MetricContext, build_metrics
    from erasure.eval.prompts import PromptSet
    from erasure.world.scenes import render_scene, sample_scene

    shapes = ["circle", "square", "star", "none"]
    rows = [PromptRow(i, f"a {s}", i, label=s, type="erased" if s == "circle" else "retained") for i, s in enumerate(shapes)]
    images = []
    for row in rows:
        rng = np.random.default_rng(row.index)
        scene = sample_scene(rng, num_objects=0) if row.label == "none" else sample_scene(rng, num_objects=1, shape=row.label)
        images.append(render_scene(scene, 32)[0])
    context = MetricContext("mini-sd", torch.device("cpu"), PromptSet("t", "t", rows))
    (world,) = build_metrics(["world"], context)
    records = world.load().score(images, rows)
    assert [r["predicted"] for r in records] == shapes
    summary = world.summarize(rows, records)
    assert summary["erasure"]["acc_e"] == 100.0 and summary["erasure"]["acc_s"] == 100.0
    assert world.settings()["weights_sha256"]


def test_world_metric_refuses_classes_outside_the_world():
    from erasure.eval.metrics import MetricContext, build_metrics

    prompts = load_prompt_set("cifar10/airplane", limit=3)
    with pytest.raises(ErasureError, match="class 'airplane'"):
        build_metrics(["world"], MetricContext("mini-sd", torch.device("cpu"), prompts))


def _world(rows, **config):
    from erasure.eval.metrics import MetricContext, build_metrics
    from erasure.eval.prompts import PromptSet

    context = MetricContext("mini-sd", torch.device("cpu"), PromptSet("t", "t", rows))
    (world,) = build_metrics({"world": config}, context)
    return world


@pytest.mark.parametrize("name, attribute", [("shapes/circle-square-triangle", "shape"), ("shapes/all", "shape"),
                                             ("colours/purple", "colour"), ("styles/outlined", "style"),
                                             ("pairs/erase-6", "pair"), ("pairs/all", "pair")])
def test_world_metric_infers_the_attribute_from_the_classes(name, attribute):
    world = _world(load_prompt_set(name).rows)
    assert world.settings()["attribute"] == attribute and world.settings()["config"]["attribute"] == "auto"


@pytest.mark.parametrize("labels, config, message", [
    (["circle", "red"], {}, "mixes world attributes (shape 'circle', colour 'red'): give each attribute its own"),
    (["outlined", "none"], {}, "mixes world attributes (style 'outlined', shape 'none')"),
    (["red", "blue"], {"attribute": "shape"}, "scores shape (circle, square, triangle, star, heart, cross, none), but "
                                              "the prompt set has class 'red': use world.attribute=auto"),
    (["red"], {"attribute": "size"}, "must be one of 'auto', 'shape', 'colour', 'style', 'pair'"),
    (["red circle", "circle"], {}, "mixes world attributes (pair 'red circle', shape 'circle')"),
])
def test_world_metric_attribute_errors_name_the_fix(labels, config, message):
    rows = [PromptRow(i, "p", i, label=label) for i, label in enumerate(labels)]
    with pytest.raises(ErasureError, match=re.escape(message)):
        _world(rows, **config)


@pytest.mark.skipif(not WORLD_CLASSIFIER.is_file(), reason="the bundled world classifier is not built yet")
def test_world_metric_scores_colours_and_styles_of_rendered_scenes():
    from erasure.world.scenes import render_scene, sample_scene

    for attribute, labels in (("colour", ["red", "blue", "yellow", "purple"]), ("style", ["filled", "outlined"])):
        rows = [PromptRow(i, "p", i, label=label, type="erased" if i == 0 else "retained") for i, label in enumerate(labels)]
        images = []
        for row in rows:
            scene = sample_scene(np.random.default_rng(row.index), num_objects=1, size="large", **{attribute: row.label})
            images.append(render_scene(scene, 32)[0])
        world = _world(rows).load()
        records = world.score(images, rows)
        assert [r["predicted"] for r in records] == labels and all(r["expected"] == r["predicted"] for r in records)
        assert {"shape", "colour", "style"} - {attribute} <= set(records[0])  # the other attributes, per image
        assert world.summarize(rows, records)["erasure"]["acc_s"] == 100.0


@pytest.mark.skipif(not WORLD_CLASSIFIER.is_file(), reason="the bundled world classifier is not built yet")
def test_world_metric_scores_a_pair_right_only_when_shape_and_colour_both_are():
    from erasure.world.scenes import render_scene, sample_scene

    drawn = [("red", "circle"), ("blue", "star"), ("yellow", "square"), ("green", "heart")]
    expected = ["red circle", "blue star", "yellow heart", "purple heart"]  # right, right, wrong shape, wrong colour
    rows = [PromptRow(i, "p", i, label=label, type="erased" if i == 0 else "retained") for i, label in enumerate(expected)]
    images = [render_scene(sample_scene(np.random.default_rng(i), num_objects=1, size="large", colour=c, shape=s), 32)[0]
              for i, (c, s) in enumerate(drawn)]
    world = _world(rows).load()
    records = world.score(images, rows)
    assert [r["predicted"] for r in records] == [f"{c} {s}" for c, s in drawn]
    assert [r["correct"] for r in records] == [True, True, False, False]
    assert records[0]["probability"] > 0.5 > records[2]["probability"]  # product of the two heads' probabilities
    assert world.settings()["attribute"] == "pair"


# ---- ImageNet ResNet-50 and NudeNet ----


def test_resnet50_without_cached_weights_names_the_fix(tmp_path, monkeypatch):
    from erasure.eval.metrics import MetricContext, build_metrics

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    context = MetricContext("sd", torch.device("cpu"), load_prompt_set("imagenette/church", limit=3))
    with pytest.raises(ErasureError, match="not in the torch hub cache.*resnet50.weights"):
        build_metrics(["resnet50"], context)


def test_resnet50_scores_against_imagenette_indices(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import resnet50

    from erasure.eval.metrics import MetricContext, build_metrics
    from erasure.eval.metrics.resnet import IMAGENETTE_IDS

    torch.manual_seed(0)
    weights = tmp_path / "resnet50.safetensors"
    save_file(resnet50().state_dict(), str(weights))
    prompts = load_prompt_set("imagenette/church", limit=3)
    (metric,) = build_metrics({"resnet50": {"weights": str(weights)}}, MetricContext("sd", torch.device("cpu"), prompts))
    images = [Image.fromarray(np.random.default_rng(row.index).integers(0, 255, (32, 32, 3), dtype=np.uint8))
              for row in prompts.rows]
    records = metric.load().score(images, prompts.rows)
    for row, record in zip(prompts.rows, records):
        assert record["expected"] == row.label and 0 < record["probability"] < 1
    assert metric.settings()["class_ids"]["church"] == IMAGENETTE_IDS["church"] == 497


def test_nudenet_counts_only_the_nine_exposed_labels_above_threshold():
    from erasure.eval.metrics import MetricContext, build_metrics
    from erasure.eval.prompts import PromptSet

    class FakeDetector:  # what NudeDetector.detect returns, for images we cannot ship
        def detect(self, image):  # image i is uniformly grey i (as a BGR array, as cv2.imread gives)
            return {0: [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.7, "box": [0, 0, 1, 1]},
                        {"class": "FEMALE_BREAST_EXPOSED", "score": 0.5, "box": [0, 0, 1, 1]},
                        {"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 1, 1]}],
                    1: [{"class": "FEET_EXPOSED", "score": 0.6, "box": [0, 0, 1, 1]}],
                    2: []}[int(image[0, 0, 0])]

    rows = [PromptRow(i, "p", i) for i in range(3)]
    (metric,) = build_metrics(["nudenet"], MetricContext("sd", torch.device("cpu"), PromptSet("t", "t", rows)))
    metric.load()._detector = FakeDetector()
    records = metric.score([Image.new("RGB", (8, 8), (i, i, i)) for i in range(3)], rows)
    summary = metric.summarize(rows, records)["groups"]["all"]
    assert summary["detections"]["FEMALE_BREAST_EXPOSED"] == 1 and summary["detections"]["FEET_EXPOSED"] == 1
    assert summary["total_detections"] == 2 and summary["images_with_any"] == 2
    assert summary["share_with_any"] == pytest.approx(200 / 3)


# ---- the metric life cycle: check loads nothing, load loads once, score needs load ----


def _context(rows, model="mini-sd"):
    return MetricContext(model, torch.device("cpu"), PromptSet("t", "t", rows))


def test_building_and_checking_metrics_loads_no_model(monkeypatch, tiny_clip, tmp_path):
    """Every process of a launch builds and checks the metrics; only the scoring one loads."""
    from safetensors.torch import save_file
    from torchvision.models import resnet50

    import erasure.eval.metrics.clip_models as clip_models
    import erasure.world.classifier as classifier

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded while building or checking metrics")

    weights = tmp_path / "resnet50.safetensors"
    save_file(resnet50().state_dict(), str(weights))
    monkeypatch.setattr(clip_models, "load_clip", forbidden)
    monkeypatch.setattr("erasure.eval.metrics.clip_score.load_clip", forbidden)
    monkeypatch.setattr("erasure.eval.metrics.clip_accuracy.load_clip", forbidden)
    monkeypatch.setattr(classifier, "load_world_classifier", forbidden)
    monkeypatch.setattr("nudenet.NudeDetector", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    rows = [PromptRow(i, f"a {label}", i, label=label) for i, label in enumerate(["circle", "square"])]
    built = build_metrics({"world": {}, "clip": {"model": str(tiny_clip)}, "clip-accuracy": {"model": str(tiny_clip)},
                           "nudenet": {}}, _context(rows))
    assert [m.name for m in built] == ["world", "clip", "clip-accuracy", "nudenet"]
    church = load_prompt_set("imagenette/church", limit=2)
    (resnet,) = build_metrics({"resnet50": {"weights": str(weights)}}, MetricContext("sd", torch.device("cpu"), church))
    for metric in [*built, resnet]:
        with pytest.raises(RuntimeError, match=f"metric '{metric.name}' is not loaded: call load"):
            metric.score([Image.new("RGB", (32, 32))], rows[:1])


def test_load_loads_once(monkeypatch):
    import erasure.world.classifier as classifier

    calls = []
    real = classifier.load_world_classifier
    monkeypatch.setattr(classifier, "load_world_classifier", lambda *a, **k: calls.append(1) or real(*a, **k))
    (world,) = build_metrics(["world"], _context([PromptRow(0, "a circle", 0, label="circle")]))
    assert world.load() is world and world.load() is world
    assert len(calls) == 1


# ---- in-memory scoring equals scoring the PNGs the evaluator writes ----


def test_scoring_images_in_memory_equals_scoring_the_written_pngs(tiny_clip, tmp_path):
    """The evaluator writes PNGs and reads them back to score; RECE's validation scores the
    images straight from the pipeline. Both must give the same records, metric by metric."""
    from erasure.eval import generate as gen
    from erasure.generation import generation_settings
    from erasure.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd1")
    prompts = load_prompt_set("shapes/circle", limit=4)
    settings = generation_settings(pipe, num_inference_steps=2, resolution=32, batch_size=3, model="tiny")
    in_memory = gen.generate_in_memory(pipe, prompts.rows, settings)
    gen.generate_images(pipe, prompts.rows, tmp_path, settings, "tiny")
    from_disk = gen.collect_images(prompts.rows, tmp_path, settings, "tiny")
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(in_memory, from_disk))
    assert len({np.asarray(im).tobytes() for im in in_memory}) == len(in_memory)  # four different images

    context = MetricContext("mini-sd", torch.device("cpu"), prompts)
    metrics = build_metrics({"world": {}, "clip": {"model": str(tiny_clip)}, "clip-accuracy": {"model": str(tiny_clip)},
                             "nudenet": {"threshold": 0.0}}, context)
    for metric in metrics:
        metric.load()
        assert metric.score(in_memory, prompts.rows) == metric.score(from_disk, prompts.rows), metric.name


def test_nudenet_sees_an_image_in_memory_as_it_reads_its_png(tmp_path):
    """NudeNet reads a file with cv2 (BGR); an image in memory is handed over the same way."""
    import cv2

    from erasure.eval.metrics.nudenet import detector_input

    pixels = np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    image.save(tmp_path / "x.png")
    assert np.array_equal(detector_input(image), cv2.imread(str(tmp_path / "x.png")))
    rgba = image.convert("RGBA")
    assert np.array_equal(detector_input(rgba), detector_input(image))
