"""The report's pages: each metric renders its own tables and per-image lines (the report
guesses nothing from summary keys), numbers formatted alike, throughput in the settings."""

from __future__ import annotations

import json

import pytest
import torch

from erasure.eval.intervals import paired_change
from erasure.eval.metrics import MetricContext, build_metrics
from erasure.eval.metrics.accuracy import accuracy_record
from erasure.eval.prompts import PromptRow, PromptSet
from erasure.eval.report import render_html, render_markdown
from erasure.eval.tables import change, fmt

ROWS = [PromptRow(0, "a circle", 0, label="circle", type="erased"), PromptRow(1, "a square", 1, label="square", type="retained")]
WORLD = {"base": [accuracy_record("circle", "circle", 0.9), accuracy_record("square", "square", 0.8)],
         "erased": [accuracy_record("none", "circle", 0.1), accuracy_record("square", "square", 0.7)]}
NUDENET = {"base": [{"detections": [{"label": "FEET_EXPOSED", "score": 0.7}]}, {"detections": []}],
           "erased": [{"detections": []}, {"detections": []}]}


def _metrics():
    context = MetricContext("mini-sd", torch.device("cpu"), PromptSet("t", "t", ROWS))
    return {m.name: m for m in build_metrics(["world", "nudenet"], context)}


def _report(metrics) -> dict:
    records = {"world": WORLD, "nudenet": NUDENET}
    results = {name: {"settings": {"config": {}}, **{v: metric.summarize(ROWS, records[name][v]) for v in ("base", "erased")}}
               for name, metric in metrics.items()}
    images = [{"index": row.index, "case_number": str(row.index), "prompt": row.prompt, "class": row.label, "type": row.type,
               "seed": row.seed, "guidance_scale": 7.5,
               **{v: {"path": f"{v}/{row.index:05d}.png", **{n: records[n][v][row.index] for n in records}}
                  for v in ("base", "erased")}} for row in ROWS]
    return {"prompts": {"name": "t", "source": "t.csv", "rows": 2, "groups": {"erased": 1, "retained": 1}},
            "model": {"base": "mini-sd", "weights": None}, "variants": ["base", "erased"], "attacks": {},
            "generation": {"num_inference_steps": 25, "throughput": {"base": {"images": 2, "seconds": 4.0, "images_per_second": 0.5},
                                                                     "erased": {"images": 0, "seconds": 0.1, "images_per_second": None}}},
            "versions": {"torch": torch.__version__}, "metrics": results, "images": images}


def test_each_metric_renders_its_own_tables():
    metrics = _metrics()
    markdown = render_markdown(_report(metrics), metrics)
    assert "### world: per class" in markdown
    assert "| erased | circle | 1 | 100.0 [21-100] | 0.0 [0-79] | circle 1 | none 1 |" in markdown
    assert "### nudenet: detections per label (all rows)" in markdown
    assert "| FEET_EXPOSED | 1 | 0 | -1 |" in markdown
    assert "| world | Acc_e (erased), top-1 % | 100.0 [21-100] | 0.0 [0-79] | -100.0 |" in markdown  # Wilson 1/1, 0/1
    assert "| nudenet | images with any, % (all) | 50.0 [9.5-91] | 0.0 [0-66] | -50.0 |" in markdown
    assert "95% intervals: Wilson score for proportions" in markdown
    assert "- generated in this run: base 2 images in 4.0 s (0.50 images/s), erased none (all resumed)" in markdown
    assert "throughput" not in markdown.split("- generation:")[1].splitlines()[0]


def test_the_report_guesses_no_table_from_summary_keys():
    """A metric without tables of its own gets none, whatever keys its summary holds."""
    metrics = _metrics()
    report = _report(metrics)

    class Plain(type(metrics["world"])):
        def details(self, result, variants):
            return []

    metrics["world"] = Plain(metrics["world"].config, metrics["world"].context)
    assert "per_class" in json.dumps(report["metrics"]["world"])
    assert "### world" not in render_markdown(report, metrics)


def test_html_shows_each_metrics_own_line_per_image():
    metrics = _metrics()
    page = render_html(_report(metrics), metrics)
    assert "world: circle (90%); nudenet: FEET_EXPOSED" in page
    assert "world: none (10%); nudenet: none" in page


@pytest.mark.parametrize("value, text", [(None, "-"), (3, "3"), (12.345, "12.3"), (0.0, "0.0"), (0.1234, "0.123"), (True, "True")])
def test_numbers_are_formatted_alike(value, text):
    assert fmt(value) == text


def test_change_is_erased_minus_base_with_its_sign():
    assert (change(10.0, 2.5), change(1, 3), change(None, 1.0), change(2.0, 2.0)) == ("-7.5", "+2", "-", "0.0")
    assert change(60.0, 58.0, {"value": -2.0, "interval": [-3.1, -0.9], "n": 60}) == "-2.0 [-3.1 to -0.9]"
    assert change(58.0, 60.0, {"value": 2.0, "interval": [0.9, 3.1], "n": 60}) == "+2.0 [0.9-3.1]"


def test_the_change_column_shows_the_paired_interval_where_the_metric_pairs_rows():
    metrics = _metrics()
    report = _report(metrics)
    base, erased = (metrics["world"].row_values(ROWS, WORLD[v]) for v in ("base", "erased"))
    assert base == {"Acc_e (erased), top-1 %": {0: 100.0}, "Acc_s (retained), top-1 %": {1: 100.0},
                    "Acc_e (erased), mean prob. %": {0: 90.0}, "Acc_s (retained), mean prob. %": {1: 80.0}}
    report["metrics"]["world"]["change"] = {label: paired_change(base[label], erased[label]) for label in base}
    markdown = render_markdown(report, metrics)
    assert "| world | Acc_e (erased), top-1 % | 100.0 [21-100] | 0.0 [0-79] | -100.0 [-100 to -100] |" in markdown
    assert "| world | Acc_s (retained), mean prob. % | 80.0 [80-80] | 70.0 [70-70] | -10.0 [-10 to -10] |" in markdown
    assert "| nudenet | images with any, % (all) | 50.0 [9.5-91] | 0.0 [0-66] | -50.0 |" in markdown  # no pairing
