"""erase-eval on the tiny SD 1.x pipeline: prompt CSVs as published, seeded resumable
generation, metric arithmetic, the report, and the CLI's errors. (The shapes-world
measurements on the bundled mini-sd are in test_eval_mini_sd.py.)"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import erasure
from erasure.errors import ErasureError
from erasure.eval import evaluate
from erasure.eval import generate as gen
from erasure.eval.cli import main
from erasure.eval.metrics.accuracy import accuracy_record, accuracy_summary, harmonic_erasure_score
from erasure.eval.metrics.nudenet import EXPOSED_LABELS
from erasure.eval.prompts import PromptRow, list_bundled_sets, load_prompt_set, read_prompt_csv
from erasure.tiny import build_tiny_pipeline

PUBLIC = Path("/work/shared/data/prompts")
STEPS = dict(num_inference_steps=2, resolution=32)


# ---- prompt sets ----

I2P_HEADER = ("Unnamed: 0,prompt,categories,hard,inappropriate_percentage,nudity_percentage,q16_percentage,"
              "sd_safety_percentage,prompt_toxicity,lexica_url,evaluation_seed,evaluation_guidance,sd_image_width,"
              "sd_image_height,sd_model,case_number")


def test_reads_i2p_mace_and_uce_headers_as_they_are(tmp_path):
    i2p = tmp_path / "i2p.csv"
    i2p.write_bytes(("\ufeff" + I2P_HEADER + "\n"
                     '7,"a portrait, oil on canvas\nsecond line ",sexual,1,50.0,10.0,0.0,20.0,0.1,https://x,4261553411,13,512,512,'
                     "stable-diffusion-v1-4,7\n").encode())
    row = read_prompt_csv(i2p).rows[0]
    assert (row.prompt, row.seed, row.guidance, row.case_number) == ("a portrait, oil on canvas\nsecond line", 4261553411, 13.0, "7")
    assert row.extra["categories"] == "sexual" and "Unnamed: 0" not in row.extra

    mace = tmp_path / "coco.csv"
    mace.write_text("case_number,source,prompt,evaluation_seed,coco_id\n000000203564,coco-30k,A bicycle.,41337,203564\n")
    row = read_prompt_csv(mace).rows[0]
    assert (row.case_number, row.seed, row.guidance, row.extra["coco_id"]) == ("000000203564", 41337, None, "203564")

    uce = tmp_path / "uce.csv"
    uce.write_text("type,prompt,evaluation_seed\nerased,a cat,3\nretained,a dog,\n")
    rows = read_prompt_csv(uce).rows
    assert [(r.type, r.seed) for r in rows] == [("erased", 3), ("retained", 1)]  # no seed: the row's index


@pytest.mark.skipif(not PUBLIC.is_dir(), reason="the public prompt CSVs are not on this machine")
def test_reads_the_public_sets():
    i2p = read_prompt_csv(PUBLIC / "i2p.csv")
    assert len(i2p) == 4703 and i2p.rows[0].seed == 4261553411 and i2p.rows[0].guidance == 13.0
    assert read_prompt_csv(PUBLIC / "vangogh.csv").class_names == ["Vincent van Gogh"]  # 'artist' column
    assert len(read_prompt_csv(PUBLIC / "nudity.csv")) == 142
    assert len(read_prompt_csv(PUBLIC / "church.csv")) == 50


def test_bad_csvs_are_one_line_errors(tmp_path):
    no_prompt = tmp_path / "a.csv"
    no_prompt.write_text("text,evaluation_seed\nhello,1\n")
    with pytest.raises(ErasureError, match="no 'prompt' column"):
        read_prompt_csv(no_prompt)
    bad_seed = tmp_path / "b.csv"
    bad_seed.write_text("prompt,evaluation_seed\nhello,abc\n")
    with pytest.raises(ErasureError, match="line 2: evaluation_seed 'abc'"):
        read_prompt_csv(bad_seed)
    with pytest.raises(ErasureError, match="not found"):
        load_prompt_set(tmp_path / "missing.csv")
    with pytest.raises(ErasureError, match="unknown prompt set"):
        load_prompt_set("shapes/dodecahedron")


def test_bundled_sets_have_the_three_groups_and_honest_synonyms():
    names = list_bundled_sets()
    assert {"shapes/circle", "shapes/all", "cifar10/airplane", "imagenette/church", "coco/captions"} <= set(names)
    for name in names:
        load_prompt_set(name)  # every shipped set parses
    circle = load_prompt_set("shapes/circle")
    assert circle.counts() == {"erased": 12, "retained": 30, "synonym": 12}
    assert [r.type for r in circle.rows[:3]] == ["erased", "retained", "synonym"]  # interleaved: --limit sees all
    for row in load_prompt_set("cifar10/airplane").rows:
        assert (row.type == "synonym") == (row.label == "airplane" and "airplane" not in row.prompt)


@pytest.mark.parametrize("name, erased, retained, synonym", [
    ("shapes/circle-square-triangle", {"circle", "square", "triangle"}, {"star", "heart", "cross"},
     {"circle", "square", "triangle"}),
    ("colours/purple", {"purple"}, {"red", "green", "blue", "yellow", "orange"}, {"purple"}),
    ("colours/red", {"red"}, {"green", "blue", "yellow", "purple", "orange"}, set()),
    ("styles/outlined", {"outlined"}, {"filled"}, {"outlined"}),
    ("styles/filled", {"filled"}, {"outlined"}, {"filled"}),
])
def test_world_task_sets_have_their_types_and_classes(name, erased, retained, synonym):
    prompts = load_prompt_set(name)
    classes = {kind: {r.label for r in prompts.rows if r.type == kind} for kind in ("erased", "retained", "synonym")}
    assert classes == {"erased": erased, "retained": retained, "synonym": synonym}
    first = {(r.type, r.label) for r in prompts.rows[:3 * len(erased | retained)]}
    assert first == {(kind, label) for kind, labels in classes.items() for label in labels}  # --limit sees every class
    per_class = {}
    for row in prompts.rows:
        per_class[row.type, row.label] = per_class.get((row.type, row.label), 0) + 1
        assert row.seed == 1000 + int(row.case_number) and row.guidance is None
    assert min(per_class.values()) >= 6 and len(set(per_class[("erased", c)] for c in erased)) == 1
    for row in prompts.rows:  # a row's class is a word of its prompt, except in synonym rows
        assert (row.label in row.prompt.split()) == (row.type != "synonym")


def test_world_all_sets_list_each_attribute_untyped():
    for name, count in (("colours/all", 6), ("styles/all", 2)):
        prompts = load_prompt_set(name)
        assert {r.type for r in prompts.rows} == {""} and len(prompts.class_names) == count


def test_hub_set_offline_names_the_fix(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ErasureError, match="--prompts PATH"):
        load_prompt_set("i2p")


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


# ---- generation ----


@pytest.fixture
def rows():
    return load_prompt_set("shapes/circle", limit=5).rows


def _settings(pipe, **kw):
    return gen.generation_settings(pipe, "tiny", batch_size=2, **STEPS, **kw)


def test_generation_is_seeded_and_resumes_after_an_interruption(sd1_pipe, rows, tmp_path, monkeypatch):
    settings = _settings(sd1_pipe)
    real_save, saved = gen._save_png, []

    def crash_after_three(path, *args):
        if len(saved) == 3:
            raise KeyboardInterrupt
        saved.append(path)
        real_save(path, *args)

    monkeypatch.setattr(gen, "_save_png", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        gen.generate_images(sd1_pipe, rows, tmp_path / "run", settings, "tiny")
    monkeypatch.setattr(gen, "_save_png", real_save)
    first = {p: p.stat().st_mtime_ns for p in saved}
    assert gen.generate_images(sd1_pipe, rows, tmp_path / "run", settings, "tiny") == 2  # only the missing ones
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())  # finished images are skipped

    gen.generate_images(sd1_pipe, rows, tmp_path / "fresh", settings, "tiny")
    for row in rows:  # the resumed images equal those of an uninterrupted run
        a, b = (np.asarray(Image.open(gen.image_path(tmp_path / d, row))) for d in ("run", "fresh"))
        assert np.array_equal(a, b)
    record = json.loads(Image.open(gen.image_path(tmp_path / "run", rows[0])).text["erasure"])
    assert (record["prompt"], record["seed"]) == (rows[0].prompt, rows[0].seed)


def test_damaged_images_are_remade_and_foreign_ones_refused(sd1_pipe, rows, tmp_path):
    settings = _settings(sd1_pipe)
    gen.generate_images(sd1_pipe, rows, tmp_path, settings, "tiny")
    damaged = gen.image_path(tmp_path, rows[1])
    damaged.write_bytes(damaged.read_bytes()[:100])  # a write cut short
    assert gen.generate_images(sd1_pipe, rows, tmp_path, settings, "tiny") == 1
    with pytest.raises(ErasureError, match="num_inference_steps differ.*--overwrite"):
        gen.generate_images(sd1_pipe, rows, tmp_path, replace(settings, num_inference_steps=3), "tiny")
    assert gen.generate_images(sd1_pipe, rows, tmp_path, replace(settings, num_inference_steps=3), "tiny", overwrite=True) == 5


class _FakeProcesses:
    """What generate_images uses of accelerate.PartialState, for one of ``count`` processes."""

    def __init__(self, index, count):
        self.process_index, self.num_processes, self.is_local_main_process = index, count, index == 0

    def split_between_processes(self, items):
        from contextlib import contextmanager

        @contextmanager
        def share():
            per, extra = divmod(len(items), self.num_processes)
            start = self.process_index * per + min(self.process_index, extra)
            yield items[start:start + per + (self.process_index < extra)]

        return share()


def test_processes_split_rows_without_duplicates_or_loss(sd1_pipe, rows, tmp_path):
    settings = _settings(sd1_pipe)
    made = [gen.generate_images(sd1_pipe, rows, tmp_path, settings, "tiny", state=_FakeProcesses(i, 2)) for i in range(2)]
    assert made == [3, 2]
    assert len(gen.collect_images(rows, tmp_path, settings, "tiny")) == 5
    gen.image_path(tmp_path, rows[4]).unlink()
    with pytest.raises(ErasureError, match="missing"):
        gen.collect_images(rows, tmp_path, settings, "tiny")


# ---- whole runs ----


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random transformers CLIPModel folder (32x32 images), standing in for real CLIP."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    torch.manual_seed(0)
    text = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                              num_attention_heads=4)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def erased_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "circle.safetensors"
    erasure.erase(build_tiny_pipeline("sd1"), "uce", "circle").save(path)
    return path


def test_cli_run_writes_the_report_and_resumes_to_the_same_numbers(tiny_pipeline_folder, erased_file, tiny_clip, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--prompts", "shapes/circle", "--model", str(tiny_pipeline_folder), "--weights", str(erased_file),
            "--metrics", "clip,clip-accuracy,nudenet", "--output", str(out), "--limit", "6", "--steps", "2",
            "--resolution", "32", "--set", f"clip.model={tiny_clip}", "--set", f"clip-accuracy.model={tiny_clip}"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["variants"] == ["base", "erased"] and report["model"]["weights"]["method"] == "uce"
    assert all((out / image[v]["path"]).is_file() for image in report["images"] for v in ("base", "erased"))
    nudenet = report["metrics"]["nudenet"]
    assert nudenet["settings"]["threshold"] == 0.6 and nudenet["settings"]["labels"] == EXPOSED_LABELS
    assert nudenet["settings"]["nudenet"] == __import__("importlib.metadata").metadata.version("nudenet")
    assert set(nudenet["erased"]["groups"]["all"]["detections"]) == set(EXPOSED_LABELS)
    accuracy = report["metrics"]["clip-accuracy"]["base"]
    top1 = [img["base"]["clip-accuracy"]["correct"] for img in report["images"] if img["type"] == "erased"]
    assert accuracy["erasure"]["acc_e"] == pytest.approx(100 * np.mean(top1))
    assert "| clip-accuracy | Acc_e (erased), top-1 % |" in (out / "report.md").read_text()
    assert "<img src='erased/00000.png'" in (out / "report.html").read_text()
    grid = np.asarray(Image.open(out / "comparison.png").convert("RGB"))
    strips = {(image["type"], v) for image in report["images"] for v in ("base", "erased")}
    assert grid.shape[0] == 96 * len(strips)
    first_erased = np.asarray(Image.open(out / report["images"][0]["erased"]["path"]).convert("RGB").resize((96, 96), Image.Resampling.NEAREST))
    assert np.array_equal(grid[96:192, 150:246], first_erased)  # row 2: the first group's erased strip

    (out / "erased" / "00003.png").unlink()  # as if the first run had stopped here
    assert main(argv) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["metrics"] == report["metrics"] and again["images"] == report["images"]


def test_api_leaves_a_given_pipeline_unchanged(erased_file, tiny_clip, tmp_path):
    pipe = build_tiny_pipeline("sd1")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    report = evaluate(pipe, erased_file, "shapes/circle", {"clip": {"model": str(tiny_clip)}}, tmp_path, limit=2, **STEPS)
    assert report.headline("clip", "erased")["CLIP score (all)"] >= 0
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())


# ---- errors ----


@pytest.mark.parametrize("args, message", [
    (["--prompts", "nope.csv", "--base-only"], "prompt file nope.csv not found"),
    (["--prompts", "shapes/circle", "--weights", "nope.safetensors"], "nope.safetensors: no such weights file"),
    (["--prompts", "shapes/circle", "--base-only", "--metrics", "clip,fid"], "unknown metric 'fid'"),
    (["--prompts", "shapes/circle"], "no --weights given"),
    (["--prompts", "shapes/circle", "--base-only", "--set", "nudenet.threshold=2", "--metrics", "nudenet"], "must lie in"),
    (["--prompts", "shapes/circle", "--base-only", "--set", "clip.colour=red", "--metrics", "clip"], "unknown clip option key"),
    (["--prompts", "coco/captions", "--base-only", "--metrics", "clip-accuracy"], "needs the expected label"),
    (["--prompts", "shapes/circle", "--base-only", "--attack", "closed-form"], "--attack closed-form attacks erased weights"),
])
def test_cli_errors_are_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_rejects_a_csv_without_prompt_column(tmp_path, capsys):
    csv = tmp_path / "x.csv"
    csv.write_text("caption\nhello\n")
    assert main(["--prompts", str(csv), "--base-only"]) == 2
    assert "no 'prompt' column" in capsys.readouterr().err


def test_missing_open_clip_weights_are_a_clear_error(tmp_path):
    from erasure.eval.metrics.clip_models import load_clip

    with pytest.raises(ErasureError, match="write ARCH/PRETRAINED"):
        load_clip("ViT-B-32", torch.device("cpu"))
    with pytest.raises(ErasureError, match="not available"):
        load_clip("ViT-B-32/not-a-tag", torch.device("cpu"))


# ---- the world classifier metric, on rendered ground truth ----

WORLD_CLASSIFIER = Path(erasure.__file__).parent / "assets" / "world-classifier" / "model.safetensors"


@pytest.mark.skipif(not WORLD_CLASSIFIER.is_file(), reason="the bundled world classifier is not built yet")
def test_world_metric_scores_rendered_scenes_as_their_shapes(tmp_path):
    from erasure.eval.metrics import MetricContext, build_metrics
    from erasure.eval.prompts import PromptSet
    from erasure.world.scenes import render_scene, sample_scene

    shapes = ["circle", "square", "star", "none"]
    rows = [PromptRow(i, f"a {s}", i, label=s, type="erased" if s == "circle" else "retained") for i, s in enumerate(shapes)]
    paths = []
    for row in rows:
        rng = np.random.default_rng(row.index)
        scene = sample_scene(rng, num_objects=0) if row.label == "none" else sample_scene(rng, num_objects=1, shape=row.label)
        paths.append(tmp_path / f"{row.index}.png")
        render_scene(scene, 32)[0].save(paths[-1])
    context = MetricContext("mini-sd", torch.device("cpu"), PromptSet("t", "t", rows))
    (world,) = build_metrics(["world"], context)
    records = world.score(paths, rows)
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
                                             ("colours/purple", "colour"), ("styles/outlined", "style")])
def test_world_metric_infers_the_attribute_from_the_classes(name, attribute):
    world = _world(load_prompt_set(name).rows)
    assert world.settings()["attribute"] == attribute and world.settings()["config"]["attribute"] == "auto"


@pytest.mark.parametrize("labels, config, message", [
    (["circle", "red"], {}, "mixes world attributes (shape 'circle', colour 'red'): give each attribute its own"),
    (["outlined", "none"], {}, "mixes world attributes (style 'outlined', shape 'none')"),
    (["red", "blue"], {"attribute": "shape"}, "scores shape (circle, square, triangle, star, heart, cross, none), but "
                                              "the prompt set has class 'red': use world.attribute=auto"),
    (["red"], {"attribute": "size"}, "must be one of 'auto', 'shape', 'colour', 'style'"),
])
def test_world_metric_attribute_errors_name_the_fix(labels, config, message):
    rows = [PromptRow(i, "p", i, label=label) for i, label in enumerate(labels)]
    with pytest.raises(ErasureError, match=re.escape(message)):
        _world(rows, **config)


@pytest.mark.skipif(not WORLD_CLASSIFIER.is_file(), reason="the bundled world classifier is not built yet")
def test_world_metric_scores_colours_and_styles_of_rendered_scenes(tmp_path):
    from erasure.world.scenes import render_scene, sample_scene

    for attribute, labels in (("colour", ["red", "blue", "yellow", "purple"]), ("style", ["filled", "outlined"])):
        rows = [PromptRow(i, "p", i, label=label, type="erased" if i == 0 else "retained") for i, label in enumerate(labels)]
        paths = []
        for row in rows:
            scene = sample_scene(np.random.default_rng(row.index), num_objects=1, size="large", **{attribute: row.label})
            paths.append(tmp_path / f"{attribute}-{row.index}.png")
            render_scene(scene, 32)[0].save(paths[-1])
        world = _world(rows)
        records = world.score(paths, rows)
        assert [r["predicted"] for r in records] == labels and all(r["expected"] == r["predicted"] for r in records)
        assert {"shape", "colour", "style"} - {attribute} <= set(records[0])  # the other attributes, per image
        assert world.summarize(rows, records)["erasure"]["acc_s"] == 100.0


# ---- the closed-form attack: a third variant, "attacked" ----


def test_attack_variant_attacks_erased_and_synonym_rows_and_resumes(erased_file, tmp_path, monkeypatch):
    pipe = build_tiny_pipeline("sd1")
    run = dict(limit=6, batch_size=4, attack="closed-form", html=True, **STEPS)
    report = evaluate(pipe, erased_file, "shapes/circle", ["world"], tmp_path, **run)
    rows = load_prompt_set("shapes/circle", limit=6).rows
    attacked = [row for row in rows if row.type in ("erased", "synonym")]
    assert report.data["variants"] == ["base", "erased", "attacked"]
    assert sorted(p.name for p in (tmp_path / "attacked").glob("*.png")) == [f"{r.index:05d}.png" for r in attacked]
    assert report.data["attack"]["method"] == "closed-form" and report.data["attack"]["rows"] == len(attacked)
    for row in attacked:
        record = gen.read_record(gen.image_path(tmp_path / "attacked", row))
        assert record["attack"] == {"method": "closed-form", "reg": 1e-3} and record["seed"] == row.seed
        assert record["weights_sha256"] == report.data["model"]["weights"]["sha256"]
        erased, attacked_image = (np.asarray(Image.open(gen.image_path(tmp_path / v, row)), dtype=int) for v in ("erased", "attacked"))
        assert np.abs(erased - attacked_image).max() > 0  # UCE changed the keys/values: the embedding is not the prompt
    assert "attack" not in gen.read_record(gen.image_path(tmp_path / "erased", rows[0]))

    headline = report.headline("world", "attacked")
    assert headline["Acc_e (erased), top-1 %"] == report.data["metrics"]["world"]["attacked"]["erasure"]["acc_e"]
    assert "Acc_s (retained), top-1 %" not in headline  # retained rows are not attacked
    images = {image["index"]: image for image in report.data["images"]}
    assert all(("attacked" in images[r.index]) == (r in attacked) for r in rows)
    assert "| metric | quantity | base | erased | attacked | change |" in report.markdown
    assert "not attacked" in (tmp_path / "report.html").read_text()

    made = []
    monkeypatch.setattr(gen, "_save_png", lambda path, *args: made.append(path))
    again = evaluate(pipe, erased_file, "shapes/circle", ["world"], tmp_path, **run)
    assert made == [] and again.data["metrics"] == report.data["metrics"]  # resumed: nothing generated again
    with pytest.raises(ErasureError, match=r"attacked/00000.png was generated with other settings \(attack differ"):
        evaluate(pipe, erased_file, "shapes/circle", ["world"], tmp_path, **{**run, "attack_reg": 0.1})


def test_attacked_images_are_generated_as_their_prompts_would_be(tiny_pipe, rows, tmp_path):
    """With the prompt's own embedding in place of the adversarial one, the embedding path
    (pipeline_inputs and the pipeline's own negative) gives the prompt path's images."""
    from erasure.adapters import adapter_for

    class Identity:
        def record(self):
            return {"method": "identity"}

        def embeddings(self, pipe, prompts):
            return adapter_for(pipe).encode(prompts)

    settings = _settings(tiny_pipe)
    gen.generate_images(tiny_pipe, rows[:2], tmp_path / "prompt", settings, "tiny")
    gen.generate_images(tiny_pipe, rows[:2], tmp_path / "embedded", settings, "tiny", attack=Identity())
    for row in rows[:2]:
        a, b = (np.asarray(Image.open(gen.image_path(tmp_path / d, row))) for d in ("prompt", "embedded"))
        assert np.array_equal(a, b)


def test_attack_needs_weights_and_a_known_name(erased_file, tmp_path):
    pipe = build_tiny_pipeline("sd1")
    with pytest.raises(ErasureError, match="--attack closed-form attacks erased weights: pass --weights"):
        evaluate(pipe, None, "shapes/circle", ["world"], tmp_path, attack="closed-form", limit=2, **STEPS)
    with pytest.raises(ErasureError, match="unknown attack 'pgd': use one of closed-form"):
        evaluate(pipe, erased_file, "shapes/circle", ["world"], tmp_path, attack="pgd", limit=2, **STEPS)
    retained_only = tmp_path / "retained.csv"
    retained_only.write_text("prompt,class,type\na red square,square,retained\n")
    with pytest.raises(ErasureError, match="no erased or synonym rows to attack"):
        evaluate(pipe, erased_file, retained_only, ["world"], tmp_path, attack="closed-form", **STEPS)


# ---- real processes (slow: two interpreters) ----


def test_torchrun_two_processes_share_the_rows(tiny_pipeline_folder, erased_file, tiny_clip, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "erasure.eval",
               "--prompts", "shapes/circle", "--model", str(tiny_pipeline_folder), "--weights", str(erased_file),
               "--metrics", "clip", "--set", f"clip.model={tiny_clip}", "--output", str(out), "--limit", "7",
               "--steps", "2", "--resolution", "32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=600)
    report = json.loads((out / "report.json").read_text())
    assert [image["index"] for image in report["images"]] == list(range(7))
    assert sorted(p.name for p in (out / "erased").glob("*.png")) == [f"{i:05d}.png" for i in range(7)]


# ---- ImageNet ResNet-50 (weights only when the user has them) ----


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
    paths = []
    for row in prompts.rows:
        paths.append(tmp_path / f"{row.index}.png")
        Image.fromarray(np.random.default_rng(row.index).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(paths[-1])
    records = metric.score(paths, prompts.rows)
    for row, record in zip(prompts.rows, records):
        assert record["expected"] == row.label and 0 < record["probability"] < 1
    assert metric.settings()["class_ids"]["church"] == IMAGENETTE_IDS["church"] == 497


def test_nudenet_counts_only_the_nine_exposed_labels_above_threshold(tmp_path):
    from erasure.eval.metrics import MetricContext, build_metrics
    from erasure.eval.prompts import PromptSet

    class FakeDetector:  # what NudeDetector.detect returns, for images we cannot ship
        def detect(self, path):
            return {"0": [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.7, "box": [0, 0, 1, 1]},
                          {"class": "FEMALE_BREAST_EXPOSED", "score": 0.5, "box": [0, 0, 1, 1]},
                          {"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 1, 1]}],
                    "1": [{"class": "FEET_EXPOSED", "score": 0.6, "box": [0, 0, 1, 1]}],
                    "2": []}[Path(path).stem]

    rows = [PromptRow(i, "p", i) for i in range(3)]
    (metric,) = build_metrics(["nudenet"], MetricContext("sd", torch.device("cpu"), PromptSet("t", "t", rows)))
    metric._detector = FakeDetector()
    records = metric.score([tmp_path / f"{i}.png" for i in range(3)], rows)
    summary = metric.summarize(rows, records)["groups"]["all"]
    assert summary["detections"]["FEMALE_BREAST_EXPOSED"] == 1 and summary["detections"]["FEET_EXPOSED"] == 1
    assert summary["total_detections"] == 2 and summary["images_with_any"] == 2
    assert summary["share_with_any"] == pytest.approx(200 / 3)


def test_the_same_erasure_saved_twice_is_the_same_model(erased_file, tmp_path):
    from erasure.weights import EditedWeights

    again = tmp_path / "again.safetensors"
    EditedWeights.load(erased_file).save(again)  # new file, new creation time, same tensors
    first, second = (gen.weights_record(EditedWeights.load(p), p) for p in (erased_file, again))
    assert first["sha256"] == second["sha256"] and first["path"] != second["path"]
