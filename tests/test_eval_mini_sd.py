"""erase-eval on the bundled mini-sd: the shapes world's object-erasure protocol end to end.

A UCE erasure of "circle" is evaluated on the first rows of ``shapes/circle``; the
report's per-class accuracies must equal a direct classification of the saved images,
a run interrupted and resumed must give the same report as an uninterrupted one,
NudeNet must run on the generated images and record its settings, and the closed-form
attack must add its column for the erased and synonym rows.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pytest
from PIL import Image

import erasure
from erasure.eval import evaluate
from erasure.eval import generate as gen
from erasure.eval.cli import main
from erasure.eval.metrics.nudenet import EXPOSED_LABELS

ASSETS = Path(erasure.__file__).parent / "assets"
pytestmark = pytest.mark.skipif(
    not ((ASSETS / "mini-sd" / "model_index.json").is_file() and (ASSETS / "world-classifier" / "model.safetensors").is_file()),
    reason="the bundled mini-sd or world classifier is not built yet",
)
ROWS = 9  # three erased, three retained, three synonym rows (the set interleaves them)


@pytest.fixture(scope="module")
def circle_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "circle.safetensors"
    erasure.erase(erasure.load_pipeline("mini-sd", device="cpu"), "uce", "circle").save(path)
    return path


@pytest.fixture(scope="module")
def full_run(circle_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "circle"
    argv = ["--prompts", "shapes/circle", "--model", "mini-sd", "--weights", str(circle_weights), "--device", "cpu",
            "--metrics", "world,nudenet", "--limit", str(ROWS), "--output", str(out)]
    assert main(argv) == 0
    return out, json.loads((out / "report.json").read_text())


def _direct_per_class(folder: Path, rows) -> dict:
    """Top-1 % per (type, class), classifying the saved PNGs without the evaluator."""
    from erasure.world.classifier import classify

    images = [Image.open(gen.image_path(folder, row)).convert("RGB") for row in rows]
    predicted = classify(images).shape
    table: dict = {}
    for row, label in zip(rows, predicted):
        table.setdefault((row.type, row.label), []).append(label == row.label)
    return {key: 100.0 * sum(hits) / len(hits) for key, hits in table.items()}


def test_report_accuracies_match_a_direct_computation(full_run):
    from erasure.eval.prompts import load_prompt_set

    out, report = full_run
    rows = load_prompt_set("shapes/circle", limit=ROWS).rows
    for variant in ("base", "erased"):
        direct = _direct_per_class(out / variant, rows)
        groups = report["metrics"]["world"][variant]["groups"]
        for (kind, label), top1 in direct.items():
            assert groups[kind]["per_class"][label]["top1"] == pytest.approx(top1)
        erasure_scores = report["metrics"]["world"][variant]["erasure"]
        assert erasure_scores["acc_e"] == pytest.approx(direct[("erased", "circle")])
        assert erasure_scores["acc_g"] == pytest.approx(direct[("synonym", "circle")])
    # the bundled model draws circles, and the erased one does not (UCE, paper defaults)
    base, erased = (report["metrics"]["world"][v]["erasure"] for v in ("base", "erased"))
    assert base["acc_e"] >= 2 / 3 * 100 and erased["acc_e"] < base["acc_e"]


def test_nudenet_runs_on_generated_images_and_records_its_settings(full_run):
    out, report = full_run
    nudenet = report["metrics"]["nudenet"]
    assert nudenet["settings"]["threshold"] == 0.6
    assert nudenet["settings"]["labels"] == EXPOSED_LABELS
    assert nudenet["settings"]["nudenet"] == version("nudenet")
    for variant in ("base", "erased"):
        assert nudenet[variant]["groups"]["all"]["n"] == ROWS
        assert all("detections" in image[variant]["nudenet"] for image in report["images"])
    assert "nudenet: detections per label" in (out / "report.md").read_text()


def test_a_resumed_run_gives_the_same_report(full_run, circle_weights, tmp_path, monkeypatch):
    _, uninterrupted = full_run
    real_save, saved = gen._save_png, []

    def stop_after_five(path, *args):
        if len(saved) == 5:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C
        saved.append(path)
        real_save(path, *args)

    kwargs = dict(limit=ROWS, device="cpu")
    monkeypatch.setattr(gen, "_save_png", stop_after_five)
    with pytest.raises(KeyboardInterrupt):
        evaluate("mini-sd", circle_weights, "shapes/circle", ["world", "nudenet"], tmp_path, **kwargs)
    monkeypatch.setattr(gen, "_save_png", real_save)
    resumed = evaluate("mini-sd", circle_weights, "shapes/circle", ["world", "nudenet"], tmp_path, **kwargs).data
    assert resumed["metrics"] == uninterrupted["metrics"]
    assert resumed["images"] == uninterrupted["images"]


def test_the_closed_form_attack_is_a_column_on_erased_and_synonym_rows(circle_weights, tmp_path):
    report = evaluate("mini-sd", circle_weights, "shapes/circle", ["world"], tmp_path, limit=ROWS, device="cpu",
                      attack="closed-form")
    attacked = report.data["metrics"]["world"]["attacked-closed-form"]
    assert {g: v["n"] for g, v in attacked["groups"].items()} == {"erased": 3, "synonym": 3, "all": 6}
    assert report.headline("world", "attacked-closed-form")["Acc_e (erased), top-1 %"] == attacked["erasure"]["acc_e"]
    entry = report.data["attacks"]["closed-form"]
    assert entry["config"]["reg"] == 1e-3 and entry["groups"]["erased"]["post_asr"] == attacked["erasure"]["acc_e"]
    assert sorted(p.name for p in (tmp_path / "attacked-closed-form").iterdir()) == [
        f"{image['index']:05d}.png" for image in report.data["images"] if image["type"] != "retained"]
