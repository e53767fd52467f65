"""The benchmark's quick mode on the bundled mini-sd: every method erases every task.

Floors are loose on purpose (quick mode uses a third of each prompt set and shorter
training): they catch a regression that stops a method from erasing or makes it wreck
the retained concepts, not a change of a few points. The full benchmark's numbers are
in the README.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import erasure.assets

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import benchmark  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (Path(erasure.assets.__file__).parent / "mini-sd" / "model_index.json").is_file(),
    reason="mini-sd is not built yet: scripts/build_bundled_models.sh",
)

# Measured in quick mode (6 to 12 erased rows per task, so one image is 8 to 17 points):
# Acc_e fell by 67-83 points (uce), 33-75 (rece), 75-100 (mace), 17-100 (esd-x), 8-50
# (esd-u), the whole run taking 8.5 minutes on 2 cores. Floors on the mean fall over
# the four tasks...
MEAN_ERASED_DROP = {"uce": 40, "rece": 30, "esd-x": 20, "esd-x-strict": 20, "esd-u": 20, "mace": 40}
# ...and on Acc_s per task, as a share of the base model's. esd-x-strict's quick
# setting (150 steps at lr 2e-3) measured alone on circle: Acc_e 8.3%, other shapes
# 67-100% each, hence its looser share.
RETAINED_SHARE = {"uce": 0.5, "rece": 0.5, "esd-x": 0.7, "esd-x-strict": 0.6, "esd-u": 0.3, "mace": 0.7}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("benchmark")
    return benchmark.main(["--quick", "--output", str(output)]), output


def test_every_method_erases_and_keeps_the_rest(quick_run):
    results = quick_run[0]["results"]
    for method in benchmark.METHODS:
        drops = [rows["base"]["acc_e"] - rows[method]["acc_e"] for rows in results.values()]
        assert sum(drops) / len(drops) >= MEAN_ERASED_DROP[method], (method, drops)
        for task, rows in results.items():
            assert rows[method]["acc_s"] >= RETAINED_SHARE[method] * rows["base"]["acc_s"], (task, method, rows)


def test_the_attack_columns_are_live(quick_run):
    # An embedding found in closed form against UCE's edited projections draws the circle
    # again (measured: 17% -> 83% in quick mode), on every task; UnlearnDiffAtk runs on
    # UCE's circle (quick mode's input-space attack) and on the base model, and a row it
    # does not break keeps its erased image, so its ASR is at least Acc_e on those rows.
    results = quick_run[0]["results"]
    rows = results["circle"]
    assert rows["uce"]["asr_closed-form"] >= rows["uce"]["acc_e"] + 30, rows["uce"]
    assert all(r[m]["asr_closed-form"] is not None for r in results.values() for m in r)
    assert rows["uce"]["asr_unlearndiffatk"] >= rows["uce"]["acc_e"], rows["uce"]
    assert rows["base"]["asr_unlearndiffatk"] >= 80 and rows["mace"]["asr_unlearndiffatk"] is None


def test_table_and_json_hold_every_number_from_the_reports(quick_run):
    data, output = quick_run
    saved = json.loads((output / "benchmark.json").read_text())
    table = (output / "benchmark.md").read_text()
    assert saved["results"] == json.loads(json.dumps(data["results"]))
    for task, rows in data["results"].items():
        for method, row in rows.items():
            report = json.loads((Path(row["report"]) / "report.json").read_text())
            variant = "base" if method == "base" else "erased"
            assert row["acc_e"] == report["metrics"]["world"][variant]["erasure"]["acc_e"]
            assert f"| {method} |" in table
            if method != "base":
                assert row["seconds"] > 0 and row["peak_mb"] > 100
    for task, columns in data["winners"].items():
        for column, methods in columns.items():
            values = [data["results"][task][m][column] for m in methods]
            assert all(v == values[0] or abs(v - values[0]) < 0.1 for v in values)
