"""Whole ``evaluate`` runs on the tiny SD 1.x pipeline: the report and its pictures, a
resumed run giving the same numbers, generation throughput recorded per variant, a given
pipeline left unchanged, the closed-form attack's column, and two real processes.
(The shapes-world measurements on the bundled mini-sd are in test_eval_mini_sd.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from erasure.errors import ErasureError
from erasure.eval import evaluate
from erasure.eval import generate as gen
from erasure.eval.cli import main
from erasure.eval.metrics.nudenet import EXPOSED_LABELS
from erasure.eval.prompts import load_prompt_set
from erasure.tiny import build_tiny_pipeline

from eval_fixtures import STEPS, erased_file, tiny_clip  # noqa: F401  (fixtures)



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
    retained = [img for img in report["images"] if img["type"] == "retained"]
    paired = report["metrics"]["clip"]["change"]["CLIP score (retained)"]  # erased - base, row by row
    differences = [img["erased"]["clip"]["clip_score"] - img["base"]["clip"]["clip_score"] for img in retained]
    assert paired["n"] == len(retained) > 0 and paired["value"] == pytest.approx(np.mean(differences))
    assert paired["interval"][0] <= paired["value"] <= paired["interval"][1]
    assert "<img src='erased/00000.png'" in (out / "report.html").read_text()
    grid = np.asarray(Image.open(out / "comparison.png").convert("RGB"))
    strips = {(image["type"], v) for image in report["images"] for v in ("base", "erased")}
    assert grid.shape[0] == 96 * len(strips)
    first_erased = np.asarray(Image.open(out / report["images"][0]["erased"]["path"]).convert("RGB").resize((96, 96), Image.Resampling.NEAREST))
    assert np.array_equal(grid[96:192, 150:246], first_erased)  # row 2: the first group's erased strip

    throughput = report["generation"]["throughput"]
    assert {v: t["images"] for v, t in throughput.items()} == {"base": 6, "erased": 6}
    assert all(t["images_per_second"] == pytest.approx(6 / t["seconds"], rel=0.01) for t in throughput.values())
    assert "- generated in this run: base 6 images in" in (out / "report.md").read_text()

    (out / "erased" / "00003.png").unlink()  # as if the first run had stopped here
    assert main(argv) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["metrics"] == report["metrics"] and again["images"] == report["images"]
    resumed = again["generation"]["throughput"]
    assert resumed["base"] == {"images": 0, "seconds": resumed["base"]["seconds"], "images_per_second": None}
    assert resumed["erased"]["images"] == 1


def test_api_leaves_a_given_pipeline_unchanged(erased_file, tiny_clip, tmp_path):
    pipe = build_tiny_pipeline("sd1")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    report = evaluate(pipe, erased_file, "shapes/circle", {"clip": {"model": str(tiny_clip)}}, tmp_path, limit=2, **STEPS)
    assert report.headline("clip", "erased")["CLIP score (all)"] >= 0
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())


# ---- the closed-form attack: an "attacked-closed-form" variant ----


def test_attack_variant_attacks_erased_and_synonym_rows_and_resumes(erased_file, tmp_path, monkeypatch):
    pipe = build_tiny_pipeline("sd1")
    run = dict(limit=6, batch_size=4, attack="closed-form", html=True, **STEPS)
    report = evaluate(pipe, erased_file, "shapes/circle", ["world"], tmp_path, **run)
    rows = load_prompt_set("shapes/circle", limit=6).rows
    attacked = [row for row in rows if row.type in ("erased", "synonym")]
    variant = "attacked-closed-form"
    assert report.data["variants"] == ["base", "erased", variant]
    assert sorted(p.name for p in (tmp_path / variant).glob("*.png")) == [f"{r.index:05d}.png" for r in attacked]
    entry = report.data["attacks"]["closed-form"]
    assert entry["name"] == "closed-form" and entry["rows"] == len(attacked) and entry["config"]["reg"] == 1e-3
    for row in attacked:
        record = gen.read_record(gen.image_path(tmp_path / variant, row))
        assert record["attack"] == {"name": "closed-form", "config": {"seed": 0, "reg": 1e-3}} and record["seed"] == row.seed
        assert record["weights_sha256"] == report.data["model"]["weights"]["sha256"]
        erased, attacked_image = (np.asarray(Image.open(gen.image_path(tmp_path / v, row)), dtype=int) for v in ("erased", variant))
        assert np.abs(erased - attacked_image).max() > 0  # UCE changed the keys/values: the embedding is not the prompt
    assert "attack" not in gen.read_record(gen.image_path(tmp_path / "erased", rows[0]))

    headline = report.headline("world", variant)
    assert headline["Acc_e (erased), top-1 %"] == report.data["metrics"]["world"][variant]["erasure"]["acc_e"]
    assert headline["Acc_e (erased), top-1 %"] == entry["groups"]["erased"]["post_asr"]
    assert "Acc_s (retained), top-1 %" not in headline  # retained rows are not attacked
    images = {image["index"]: image for image in report.data["images"]}
    assert all((variant in images[r.index]) == (r in attacked) for r in rows)
    assert f"| metric | quantity | base | erased | {variant} | change |" in report.markdown
    assert "not attacked" in (tmp_path / "report.html").read_text()

    made = []
    monkeypatch.setattr(gen, "_save_png", lambda path, *args: made.append(path))
    again = evaluate(pipe, erased_file, "shapes/circle", ["world"], tmp_path, **run)
    assert made == [] and again.data["metrics"] == report.data["metrics"]  # resumed: nothing generated again
    with pytest.raises(ErasureError, match=r"attacked-closed-form/00000.png was generated with other settings \(attack differ"):
        evaluate(pipe, erased_file, "shapes/circle", ["world"], tmp_path, **run, attack_options={"closed-form": {"reg": 0.1}})


def test_attack_needs_a_known_name_and_rows_to_attack(erased_file, tmp_path):
    pipe = build_tiny_pipeline("sd1")
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
    assert report["generation"]["throughput"]["erased"]["images"] == 7  # both processes' images counted
    assert sorted(p.name for p in (out / "erased").glob("*.png")) == [f"{i:05d}.png" for i in range(7)]
