"""An attack run with several seeds, read as an attacker with restarts (``erasure.eval.restarts``,
``scripts/attack_restarts.py``): a row is broken when any run breaks it, runs of another
erasure, other rows or the same seed are refused, and an edited report is caught."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from erasure.errors import ErasureError
from erasure.eval.intervals import wilson
from erasure.eval.restarts import restart_summary

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "attack_restarts.py"
_spec = importlib.util.spec_from_file_location("attack_restarts", SCRIPT)
attack_restarts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(attack_restarts)
ATTACK = "concept-inversion"
VARIANT = "attacked-concept-inversion"


def write_run(folder: Path, seed: int, erased: list[bool], synonym: list[bool] = (), weights: str = "w1",
              prompts: str = "p1", first_index: int = 0) -> Path:
    """A report.json as erase-eval writes it, reduced to what restarts read: per attacked
    row, whether the world classifier called the attacked image the row's class."""
    images = []
    for kind, shown in (("erased", erased), ("synonym", synonym)):
        for hit in shown:
            index = first_index + len(images)
            images.append({"index": index, "prompt": f"{kind} prompt {index}", "seed": 100 + index, "type": kind,
                           "class": "circle", VARIANT: {"world": {"predicted": "circle" if hit else "square",
                                                                  "expected": "circle", "correct": hit}}})
    images.append({"index": len(images), "prompt": "a square", "seed": 1, "type": "retained", "class": "square"})
    groups = {kind: {"n": len(shown), "pre_asr": 0.0, "post_asr": 100.0 * sum(shown) / len(shown)}
              for kind, shown in (("erased", erased), ("synonym", synonym)) if shown}
    report = {"format": "erasure-eval", "prompts": {"sha256": prompts},
              "model": {"base": "mini-sd", "weights": {"sha256": weights}},
              "attacks": {ATTACK: {"config": {"seed": seed, "steps": 400}, "variant": VARIANT, "judge": "world",
                                   "groups": groups}},
              "images": images}
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def test_a_row_is_broken_when_any_run_breaks_it(tmp_path):
    runs = [write_run(tmp_path / "s0", 0, [True, False, False, False], [True, False]),
            write_run(tmp_path / "s1", 1, [False, True, False, False], [True, False]),
            write_run(tmp_path / "s2", 2, [True, False, False, False], [False, False])]
    summary = restart_summary(runs, ATTACK)
    erased, synonym = summary["groups"]["erased"], summary["groups"]["synonym"]
    assert erased["per_run"] == [25.0, 25.0, 25.0]
    assert erased["pooled"] == 25.0 and erased["pooled_interval"] == wilson(3, 12)
    assert erased["any"] == 50.0 and erased["any_interval"] == wilson(2, 4)
    assert synonym["per_run"] == [50.0, 50.0, 0.0] and synonym["any"] == 50.0
    assert summary["runs"] == 3 and [s["seed"] for s in summary["settings"]] == [0, 1, 2]


def test_more_restarts_never_lower_the_any_of_k_share(tmp_path):
    outcomes = [[True, False, False], [False, False, True], [False, False, False], [True, True, False]]
    runs = [write_run(tmp_path / f"s{s}", s, shown) for s, shown in enumerate(outcomes)]
    shares = [restart_summary(runs[:k], ATTACK)["groups"]["erased"]["any"] for k in range(2, 5)]
    assert shares == sorted(shares) and shares[-1] == 100.0


@pytest.mark.parametrize("other, message", [
    (dict(weights="w2"), "another model and weights"),
    (dict(prompts="p2"), "another prompt set"),
    (dict(first_index=10), "attacked other rows"),
    (dict(seed=0), "same settings: a restart needs another seed"),
])
def test_runs_that_are_not_restarts_of_one_attack_on_one_erasure_are_refused(tmp_path, other, message):
    first = write_run(tmp_path / "a", 0, [True, False])
    second = write_run(tmp_path / "b", other.pop("seed", 1), [False, True], **other)
    with pytest.raises(ErasureError, match=message):
        restart_summary([first, second], ATTACK)


def test_an_edited_report_missing_folders_and_other_attacks_are_refused(tmp_path):
    first = write_run(tmp_path / "a", 0, [True, False])
    edited = write_run(tmp_path / "b", 1, [False, False])
    report = json.loads((edited / "report.json").read_text())
    report["attacks"][ATTACK]["groups"]["erased"]["post_asr"] = 0.0
    report["images"][0][VARIANT]["world"]["correct"] = True
    (edited / "report.json").write_text(json.dumps(report))
    with pytest.raises(ErasureError, match="do not give its concept-inversion post_asr"):
        restart_summary([first, edited], ATTACK)
    with pytest.raises(ErasureError, match="does not exist"):
        restart_summary([first, tmp_path / "missing"], ATTACK)
    with pytest.raises(ErasureError, match="has no 'unlearndiffatk' attack"):
        restart_summary([first, edited], "unlearndiffatk")
    with pytest.raises(ErasureError, match="at least two"):
        restart_summary([first], ATTACK)


def test_the_script_prints_each_group_writes_json_and_fails_in_one_line(tmp_path, capsys):
    runs = [str(write_run(tmp_path / f"s{s}", s, shown)) for s, shown in enumerate([[True, False], [False, False]])]
    assert attack_restarts.main([*runs, "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "erased (n = 2 rows): per run 50.0 / 0.0; pooled 25.0" in out and "any of 2 50.0" in out
    assert json.loads((tmp_path / "r.json").read_text())["groups"]["erased"]["any"] == 50.0
    assert attack_restarts.main([runs[0], runs[0]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs another seed" in err
