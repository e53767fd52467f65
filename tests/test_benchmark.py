"""The benchmark (``erasure.benchmark``, ``erase-bench``): its variants and tasks as read
from ``configs/benchmark/``, and its quick mode on the bundled mini-sd, where every
variant erases and must reach the floors its YAML file declares.

Quick mode: the quick tasks' first rows (circle: 36 rows, 12 per group, so one image is
8.3 points) and shorter training, erasing in this process. Floors are loose on purpose:
they catch a regression that stops a method from erasing or makes it wreck the retained
concepts, not a change of a few points. The full benchmark's numbers are in the README.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

import erasure
import erasure.assets
import erasure.attacks
from erasure import benchmark
from erasure.cli import main as erase_main
from erasure.errors import ErasureError
from erasure.methods import METHODS

MINI_SD_BUILT = (Path(erasure.assets.__file__).parent / "mini-sd" / "model_index.json").is_file()
needs_mini_sd = pytest.mark.skipif(not MINI_SD_BUILT, reason="mini-sd is not built yet: scripts/build_bundled_models.sh")

VARIANTS = benchmark.load_variants()
TASKS = benchmark.load_tasks()


# ---- the variants and tasks ----


def test_every_registered_method_is_in_the_benchmark():
    assert set(METHODS) <= {v.method for v in VARIANTS.values()}


def test_every_variant_declares_its_quick_floors():
    for variant in VARIANTS.values():
        assert set(variant.floors) == benchmark.FLOOR_KEYS, variant.source


def test_quick_mode_has_a_task():
    assert any(task.quick_rows for task in TASKS.values())


def test_a_variant_takes_its_config_per_kind_of_concept_and_quick_settings_last():
    mace = VARIANTS["mace"]
    config, _ = mace.erase_arguments(TASKS["purple"], quick=False)
    assert config.name == "mini-sd-colour.yaml" and config.is_file()
    assert mace.erase_arguments(TASKS["circle"], quick=False)[0].name == "mini-sd.yaml"
    esd_x = VARIANTS["esd-x"]
    assert esd_x.erase_arguments(TASKS["circle"], quick=False)[1]["lr"] == esd_x.settings["lr"]
    assert esd_x.erase_arguments(TASKS["circle"], quick=True)[1]["lr"] == esd_x.quick_settings["lr"]


@pytest.mark.parametrize("content, message", [
    ("method: nope\n", "unknown method 'nope'"),
    ("method: uce\nlam: 1\n", "unknown key.*lam"),
    ("method: esd\nconfig: esd/missing.yaml\n", "not a file"),
    ("method: uce\nquick: {floors: {drop: 1}}\n", "quick.floors: unknown key.*drop"),
])
def test_a_bad_variant_file_is_one_clear_error(tmp_path, content, message):
    (tmp_path / "bad.yaml").write_text(content)
    with pytest.raises(ErasureError, match=message):
        benchmark.load_variants(tmp_path)


def test_every_attack_has_a_column_and_quick_mode_runs_an_input_space_attack():
    plan = benchmark.load_attacks()
    assert set(plan.columns) == set(erasure.attacks.ATTACKS)
    circle = TASKS["circle"]
    quick = [c.name for c in plan.columns.values() if c.runs_on(circle, "uce", quick=True)]
    assert "unlearndiffatk" in quick and "closed-form" in quick
    assert not plan.columns["concept-inversion"].runs_on(TASKS["purple"], "uce", quick=False)


@pytest.mark.parametrize("content, message", [
    ("rows: 6\nquick_rows: 6\nattacks: {pgd: {}}\n", "unknown attack 'pgd'"),
    ("rows: 6\nquick_rows: 6\nattacks: {ring-a-bell: {eta: 2}}\n", "unknown key.*eta"),
    ("rows: 6\nattacks: {}\n", "missing key.*quick_rows"),
])
def test_a_bad_attacks_file_is_one_clear_error(tmp_path, content, message):
    (tmp_path / "attacks.yaml").write_text(content)
    with pytest.raises(ErasureError, match=message):
        benchmark.load_attacks(tmp_path / "attacks.yaml")


@needs_mini_sd
def test_the_child_command_makes_the_weights_the_in_process_erasure_makes(tmp_path):
    # The full benchmark erases through `erase` in child processes, quick mode in process.
    variant, task = VARIANTS["uce"], TASKS["circle"]
    pipe = erasure.load_pipeline("mini-sd", device="cpu", dtype="float32")
    here = benchmark.erase(pipe, variant, task, tmp_path / "here", model="mini-sd", device="cpu", quick=True,
                           in_process=True)
    command = benchmark.erase_command({**here["recipe"], "in_process": False}, tmp_path / "child.safetensors")
    assert command[1:3] == ["-m", "erasure.cli"]
    assert erase_main(command[3:]) == 0
    child, made_here = load_file(tmp_path / "child.safetensors"), load_file(tmp_path / "here" / "uce.safetensors")
    assert child.keys() == made_here.keys() and all((child[k] == made_here[k]).all() for k in child)


def test_a_readme_without_the_markers_fails_before_the_run(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert benchmark.main(["--quick", "--output", str(tmp_path / "out"), "--readme", str(readme)]) == 2
    assert "no <!-- benchmark:begin -->" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- quick mode on mini-sd ----


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("benchmark")
    tasks = [task for task in TASKS.values() if task.quick_rows]
    return benchmark.run(tasks, list(VARIANTS.values()), output, quick=True), output


@needs_mini_sd
def test_every_variant_erases_and_keeps_the_rest(quick_run):
    results = quick_run[0]["results"]
    for name, variant in VARIANTS.items():
        drops = [rows["base"]["acc_e"] - rows[name]["acc_e"] for rows in results.values()]
        assert sum(drops) / len(drops) >= variant.floors["erased_drop"], (name, drops)
        for task, rows in results.items():
            assert rows[name]["acc_s"] >= variant.floors["retained_share"] * rows["base"]["acc_s"], (task, name, rows)


@needs_mini_sd
def test_the_attack_columns_are_live(quick_run):
    # An embedding found in closed form against UCE's edited projections draws the circle
    # again (measured with these settings on all 12 erased rows: 8.3% -> 91.7%), for every
    # variant; UnlearnDiffAtk (quick mode's input-space attack) runs on UCE and on the base
    # model; a row it does not break keeps its erased image, so its ASR is at least Acc_e
    # on the attacked rows (the first 6 erased rows; measured at full length: 100%).
    rows = quick_run[0]["results"]["circle"]
    closed_form, uda = benchmark.asr_key("closed-form"), benchmark.asr_key("unlearndiffatk")
    assert rows["uce"][closed_form] >= rows["uce"]["acc_e"] + 30, rows["uce"]
    assert all(row[closed_form] is not None for row in rows.values())
    assert rows["uce"][uda] >= 50 and rows["base"][uda] >= 80, (rows["uce"], rows["base"])
    assert rows["mace"][uda] is None and rows["uce"][benchmark.asr_key("ring-a-bell")] is None


@needs_mini_sd
def test_table_and_json_hold_every_number_from_the_reports(quick_run):
    data, output = quick_run
    saved = json.loads((output / "benchmark.json").read_text())
    table = (output / "benchmark.md").read_text()
    assert saved["results"] == json.loads(json.dumps(data["results"]))
    for task, rows in data["results"].items():
        for name, row in rows.items():
            report = json.loads((Path(row["report"]) / "report.json").read_text())
            variant = "base" if name == "base" else "erased"
            assert row["acc_e"] == report["metrics"]["world"][variant]["erasure"]["acc_e"]
            assert f"| {name} |" in table
            if name != "base":
                assert row["seconds"] > 0 and row["peak_mb"] > 100
    for task, columns in data["winners"].items():
        for column, names in columns.items():
            values = [data["results"][task][n][column] for n in names]
            assert all(v == values[0] or abs(v - values[0]) < 0.1 for v in values)


@needs_mini_sd
def test_a_rerun_resumes_and_writes_the_readme_block(quick_run, tmp_path):
    data, output = quick_run[0], tmp_path / "benchmark"
    shutil.copytree(quick_run[1], output)  # the other tests read the original
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- benchmark:begin -->\nstale table\n<!-- benchmark:end -->\nafter\n")
    assert benchmark.main(["--quick", "--methods", "uce", "--output", str(output), "--readme", str(readme)]) == 0
    again = json.loads((output / "benchmark.json").read_text())
    first, rerun = data["results"]["circle"]["uce"], again["results"]["circle"]["uce"]
    assert again["resumed"] and rerun["report"] == str(output / "circle" / "uce")
    assert {k: v for k, v in rerun.items() if k != "report"} == {k: v for k, v in first.items() if k != "report"}
    text = readme.read_text()
    assert text.startswith("before\n<!-- benchmark:begin -->\n**one shape**") and text.endswith("-->\nafter\n")
    assert "stale table" not in text and "| uce |" in text and "| mace |" not in text
