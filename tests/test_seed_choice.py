"""``erase --seeds ... --choose-on CSV``: one erasure per seed, each attacked on the tuning
set, the rule's pick written; reruns reuse what is done; bad input is one line.

On the bundled mini-sd with ESD at a few iterations and the attacks at a size a test can
afford: the numbers are not the point, that the rule picks by them is.
"""

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

import erasure
from erasure.cli import main
from erasure.seed_choice import Candidate, SeedChoiceConfig, missed_targets
from erasure.weights import EditedWeights

MINI_SD = (Path(erasure.__file__).parent / "assets" / "mini-sd" / "model_index.json").is_file()
pytestmark = pytest.mark.skipif(not MINI_SD, reason="the bundled mini-sd is not built yet")

ATTACKS = ("attack_options={concept-inversion: {steps: 3, num_images: 2, batch_size: 2, grad_accumulation: 1}, "
           "unlearndiffatk: {timesteps: 2, steps_per_timestep: 2, vocabulary: [red, blue, circle, square]}}")
RULE = ["--choose-set", ATTACKS, "--choose-set", "attack_runs=2", "--choose-set", "confirm_top=2",
        "--choose-set", "max_acc_e=100", "--choose-set", "min_acc_s_share=0", "--choose-set", "max_clip_drop=100"]


@pytest.fixture(scope="module")
def tuning_set(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tuning") / "tune.csv"
    rows = [("a photo of a red circle", "circle", "erased"), ("a blue circle", "circle", "erased"),
            ("a red square", "square", "retained"), ("a photo of a blue triangle", "triangle", "retained")]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "evaluation_seed", "class", "type"])
        writer.writerows((prompt, 500 + i, label, kind) for i, (prompt, label, kind) in enumerate(rows))
    return path


def _erase(output: Path, *extra: str) -> int:
    return main(["--method", "esd", "--concepts", "circle", "--model", "mini-sd", "--set", "iterations=3",
                 "--set", "ddim_steps=2", "--device", "cpu", "--output", str(output), *extra])


@pytest.fixture(scope="module")
def chosen(tuning_set, tmp_path_factory):
    output = tmp_path_factory.mktemp("choice") / "circle.safetensors"
    assert _erase(output, "--seeds", "1-3", "--choose-on", str(tuning_set), *RULE) == 0
    return output


def test_the_rule_picks_the_confirmed_seed_whose_worst_attack_is_lowest(chosen):
    folder = chosen.with_name("circle.seeds")
    table = json.loads((folder / "choice.json").read_text())
    candidates = {c["seed"]: c for c in table["candidates"]}
    assert sorted(candidates) == [1, 2, 3]
    for seed, c in candidates.items():
        report = json.loads((folder / f"seed-{seed}" / "screen-concept-inversion" / "report.json").read_text())
        screening = report["attacks"]["concept-inversion"]
        assert screening["restarts"]["seeds"] == [0, 1]  # the rule's attack_seed, then the next
        assert c["screening_asr"] == screening["restarts"]["groups"]["erased"]["per_run"]
        assert c["screening_asr"][0] == screening["groups"]["erased"]["post_asr"]
        assert c["screening_any"] == screening["restarts"]["groups"]["erased"]["any"] >= max(c["screening_asr"])
        assert c["acc_e"] == report["metrics"]["world"]["erased"]["erasure"]["acc_e"]
        low, high = c["clip_change_interval"]  # paired by row, as the report's change column
        assert c["clip_change_interval"] == report["metrics"]["clip"]["change"]["CLIP score (retained)"]["interval"]
        assert low <= c["clip_change"] <= high
    confirmed = sorted(candidates.values(), key=lambda c: c["screening_mean"])[:2]
    assert {c["seed"] for c in candidates.values() if c["confirming_asr"]} == {c["seed"] for c in confirmed}
    for c in confirmed:
        report = json.loads((folder / f"seed-{c['seed']}" / "unlearndiffatk" / "report.json").read_text())
        assert c["confirming_asr"] == {"unlearndiffatk": report["attacks"]["unlearndiffatk"]["groups"]["erased"]["post_asr"]}
        assert c["worst_asr"] == max(c["screening_mean"], c["confirming_asr"]["unlearndiffatk"])
    best = min(confirmed, key=lambda c: (c["worst_asr"], -c["clip_change"]))
    assert table["chosen_seed"] == best["seed"]


def test_the_output_is_the_chosen_erasure_with_its_table_and_equals_a_single_run(chosen, tmp_path):
    written = EditedWeights.load(chosen)
    seed = written.extra["seed_choice"]["chosen_seed"]
    assert written.config["seed"] == seed
    alone = tmp_path / "alone.safetensors"
    assert _erase(alone, "--seed", str(seed)) == 0
    single = EditedWeights.load(alone)
    assert written.tensors.keys() == single.tensors.keys()
    assert all(torch.equal(written.tensors[k], single.tensors[k]) for k in single.tensors)
    others = [EditedWeights.load(chosen.with_name("circle.seeds") / f"seed-{s}.safetensors") for s in (1, 2, 3)]
    assert any(not torch.equal(others[0].tensors[k], others[1].tensors[k]) for k in others[0].tensors)


def test_a_rerun_reuses_every_erasure_and_refuses_other_settings(chosen, tuning_set, monkeypatch, capsys):
    folder = chosen.with_name("circle.seeds")
    before = {p: p.stat().st_mtime_ns for p in folder.glob("seed-*.safetensors")}
    monkeypatch.setattr("erasure.methods.Method.run", lambda *a, **k: pytest.fail("a finished erasure ran again"))
    assert _erase(chosen, "--seeds", "1-3", "--choose-on", str(tuning_set), "--overwrite", *RULE) == 0
    assert {p: p.stat().st_mtime_ns for p in folder.glob("seed-*.safetensors")} == before
    capsys.readouterr()
    assert main(["--method", "esd", "--concepts", "circle", "--model", "mini-sd", "--set", "iterations=4",
                 "--set", "ddim_steps=2", "--device", "cpu", "--output", str(chosen), "--overwrite",
                 "--seeds", "1-3", "--choose-on", str(tuning_set), *RULE]) == 2
    err = capsys.readouterr().err.strip()
    assert "was made with other settings" in err and "delete" in err and "Traceback" not in err


def test_no_seed_meeting_the_targets_is_one_line_with_the_table_kept(chosen, tuning_set, capsys):
    output = chosen.with_name("strict.safetensors")
    folder = chosen.with_name("strict.seeds")
    _link_first_run(chosen, folder, erasures=True)  # only the rule runs again
    assert _erase(output, "--seeds", "1,2", "--choose-on", str(tuning_set), *RULE, "--choose-set", "max_acc_e=-1") == 2
    err = capsys.readouterr().err.strip()  # the evaluations' progress bars, then the error
    assert err.splitlines()[-1].startswith("erase: error: no seed of 1,2 met the tuning targets (seed 1: Acc_e")
    assert "Traceback" not in err
    assert json.loads((folder / "choice.json").read_text())["chosen_seed"] is None
    assert not output.exists()


def _link_first_run(chosen: Path, folder: Path, erasures: bool) -> None:
    """Hard-link the first run's images and attack results for seeds 1 and 2 (and, with
    ``erasures``, their weights) into ``folder``."""
    first = chosen.with_name("circle.seeds")
    for path in first.rglob("*"):
        relative = path.relative_to(first)
        is_erasure = len(relative.parts) == 1 and path.suffix == ".safetensors"
        if (not path.is_file() or relative.parts[0].startswith("seed-3") or path.name == "choice.json"
                or (is_erasure and not erasures)):
            continue
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).hardlink_to(path)


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "1-3"], "--seeds and --choose-on go together"),
    (["--seeds", "3", "--choose-on", "TUNE"], "give at least two distinct seeds"),
    (["--seeds", "a-b", "--choose-on", "TUNE"], "write a range or a list of whole numbers"),
    (["--seeds", "1-2", "--seed", "4", "--choose-on", "TUNE"], "--seed and --seeds both set the seed"),
    (["--seeds", "1-2", "--resume", "--choose-on", "TUNE"], "rerun the same command without --resume"),
    (["--seeds", "1-2", "--choose-on", "TUNE", "--choose-set", "attack=pgd"], "unknown attack 'pgd'"),
    (["--seeds", "1-2", "--choose-on", "TUNE", "--choose-set", "confirm_top=two"], "confirm_top"),
    (["--seeds", "1-2", "--choose-on", "TUNE", "--choose-set", "attack_runs=0"], "attack_runs and confirm_top must be"),
    (["--seeds", "1-2", "--choose-on", "TUNE", "--choose-set", f"attack_seed={2**63 - 2}"], "leaves no room for 3 runs"),
    (["--seeds", "1-2", "--choose-on", "shapes/circle-nothing.csv"], "shapes/circle-nothing.csv"),
    (["--seeds", "1-2", "--choose-on", "ERASED_ONLY"], "needs rows of type 'erased' and 'retained'"),
    (["--seeds", "1-2", "--choose-on", "NO_CLASS"], "the rows need a 'class' column"),
])
def test_bad_choice_input_is_one_line_and_erases_nothing(extra, message, tuning_set, tmp_path, monkeypatch, capsys):
    sets = {"ERASED_ONLY": "prompt,class,type\na red circle,circle,erased\n",
            "NO_CLASS": "prompt,type\na red circle,erased\na red square,retained\n"}
    for name, text in sets.items():
        (tmp_path / f"{name}.csv").write_text(text)
    extra = [str(tmp_path / f"{a}.csv") if a in sets else str(tuning_set) if a == "TUNE" else a for a in extra]
    monkeypatch.setattr("erasure.methods.Method.run", lambda *a, **k: pytest.fail("erased despite bad input"))
    assert _erase(tmp_path / "w.safetensors", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{name}.csv" for name in sets)


def test_a_method_without_a_seed_is_refused(tuning_set, tmp_path, capsys):
    code = main(["--method", "uce", "--concepts", "circle", "--model", "mini-sd", "--output",
                 str(tmp_path / "w.safetensors"), "--seeds", "1-2", "--choose-on", str(tuning_set)])
    assert code == 2 and "uce has no seed" in capsys.readouterr().err


def test_ctrl_c_in_one_seeds_erasure_resumes_it_on_the_rerun_bit_identically(chosen, tuning_set, tmp_path,
                                                                             monkeypatch, capsys):
    from test_esd import interrupt_on_call

    output = tmp_path / "circle.safetensors"
    command = ["--seeds", "1,2", "--choose-on", str(tuning_set), *RULE, "--choose-set", "attack_runs=1",
               "--choose-set", "confirm_top=1"]
    with monkeypatch.context() as patch:
        interrupt_on_call(patch, 5)  # seed 2's second of 3 steps
        assert _erase(output, *command) == 130
    assert "rerun the same command" in capsys.readouterr().err
    folder = tmp_path / "circle.seeds"
    assert (folder / "seed-1.safetensors").is_file() and (folder / "seed-2.checkpoint").is_dir()
    assert not (folder / "seed-2.safetensors").exists()
    _link_first_run(chosen, folder, erasures=False)  # the images of the same erasures: the test's time goes on the erasure
    assert _erase(output, *command) == 0
    resumed = EditedWeights.load(folder / "seed-2.safetensors")
    uninterrupted = EditedWeights.load(chosen.with_name("circle.seeds") / "seed-2.safetensors")
    assert all(torch.equal(resumed.tensors[k], uninterrupted.tensors[k]) for k in uninterrupted.tensors)


@pytest.mark.parametrize("check_on, interval, missed", [
    ("interval", [-2.9, 0.4], ""),
    ("interval", [-3.4, 0.2], "CLIP retained -1.2, interval down to -3.4 < -3"),  # the estimate alone would pass
    ("estimate", [-3.4, 0.2], ""),
])
def test_the_clip_check_reads_the_paired_interval_or_the_estimate(check_on, interval, missed):
    candidate = Candidate(8, Path("seed-8.safetensors"), acc_e=2.0, acc_s=95.0, base_acc_s=95.0,
                          clip_retained=58.0, base_clip_retained=59.2, clip_change_interval=interval)
    rule = SeedChoiceConfig(clip_check_on=check_on, max_clip_drop=3.0 if check_on == "interval" else 2.0)
    assert missed_targets(candidate, rule) == missed
    low_acc_s = dataclasses.replace(candidate, acc_s=80.0)
    assert missed_targets(low_acc_s, rule).startswith("Acc_s 80.0 < 0.9 x base 95.0")
