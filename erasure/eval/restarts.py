"""One attack run several times with different seeds, read as an adversary with restarts.

An attacker who runs an attack again when it fails breaks a row if *any* of its runs
does. ``report.json`` holds one run's ASR (the share of attacked rows whose image shows
the concept), which is what the attacks' papers report. For an attack whose outcome
depends strongly on its seed (concept inversion learns one token per run; on mini-sd its
token seed moves the ASR by up to 40 points), that understates an attacker who tries
again. ``restart_summary`` reads ``erase-eval`` folders of the same prompts, model and
weights, attacked with different seeds (``--set attack.<name>.seed=N``), and gives per
group:

- each run's ASR (checked against the run's own ``report.json``);
- the pooled ASR over all runs' images (rows x runs, a Wilson interval that treats them
  as independent: it leaves out the run-to-run spread);
- the any-of-k ASR: the share of rows broken by at least one of the k runs, with its
  Wilson interval over rows.

``erase-eval --attack-restarts K`` runs every seeded attack K times in one run
(``report.json``'s ``attacks.<name>.restarts``, computed by ``outcome_summary``);
``python scripts/attack_restarts.py --attack concept-inversion DIR...`` combines runs made
separately (``restart_summary``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..errors import ErasureError
from .intervals import wilson
from .metrics import METRICS


def restart_summary(folders: Sequence[str | Path], attack: str) -> dict:
    """Per attacked group, each run's ASR, the pooled ASR and the any-of-k ASR (module docstring).

    Args:
        folders: ``erase-eval --output`` folders, one per run of ``attack``.
        attack: the attack's name (``report.json``'s ``attacks`` key).
    """
    if len(folders) < 2:
        raise ErasureError("restarts need at least two erase-eval folders of the same attack with different seeds")
    reports = [_read_report(Path(folder)) for folder in folders]
    sources = [str(folder) for folder in folders]
    for report, source in zip(reports, sources):
        if attack not in report.get("attacks", {}):
            raise ErasureError(f"{source} has no {attack!r} attack: give folders of erase-eval --attack {attack}")
    _check_comparable(reports, sources, attack)
    runs = [_row_outcomes(report, attack, source) for report, source in zip(reports, sources)]
    for run, source in zip(runs[1:], sources[1:]):
        if {g: set(rows) for g, rows in run.items()} != {g: set(rows) for g, rows in runs[0].items()}:
            raise ErasureError(f"{source} attacked other rows than {sources[0]}: run both with the same "
                               "--limit and --attack-limit")
    groups = {}
    for group in (g for g in reports[0]["attacks"][attack]["groups"] if g in runs[0]):
        rows = sorted(runs[0][group])
        groups[group] = outcome_summary([[run[group][key] for key in rows] for run in runs])
    return {"attack": attack, "runs": len(runs), "settings": [r["attacks"][attack]["config"] for r in reports],
            "folders": list(sources), "groups": groups}


def outcome_summary(per_run: Sequence[Sequence[bool]]) -> dict:
    """One group's numbers over k runs of an attack on the same rows (module docstring).

    Args:
        per_run: per run, per row (the same rows in the same order), whether the
            attacked image shows the concept.
    """
    rows, runs = len(per_run[0]), len(per_run)
    broken = sum(any(run[i] for run in per_run) for i in range(rows))
    shown = sum(sum(map(bool, run)) for run in per_run)
    return {
        "n": rows,
        "per_run": [100.0 * sum(map(bool, run)) / rows for run in per_run],
        "pooled": 100.0 * shown / (rows * runs),
        "pooled_interval": wilson(shown, rows * runs),
        "any": 100.0 * broken / rows,
        "any_interval": wilson(broken, rows),
    }


def _read_report(folder: Path) -> dict:
    path = folder / "report.json"
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise ErasureError(f"{path} does not exist: give the --output folders of erase-eval runs") from None
    except (OSError, json.JSONDecodeError) as error:
        raise ErasureError(f"{path} cannot be read ({error}): run that erase-eval again") from None
    if report.get("format") != "erasure-eval":
        raise ErasureError(f"{path} is not an erase-eval report")
    return report


def _check_comparable(reports: Sequence[dict], sources: Sequence[str], attack: str) -> None:
    """Same prompts, model and weights, different attack settings: otherwise the runs are
    not restarts of one attacker against one erasure."""
    first = _identity(reports[0])
    for report, source in zip(reports[1:], sources[1:]):
        for what, value in _identity(report).items():
            if value != first[what]:
                raise ErasureError(f"{source} was made with another {what} than {sources[0]}: "
                                   "restarts must attack the same erasure on the same prompts")
    settings = [json.dumps(r["attacks"][attack]["config"], sort_keys=True) for r in reports]
    if len(set(settings)) < len(settings):
        raise ErasureError(f"two folders ran {attack} with the same settings: a restart needs another seed "
                           f"(--set attack.{attack}.seed=N)")


def _identity(report: dict) -> dict:
    weights = report["model"].get("weights") or {}
    return {"prompt set": report["prompts"].get("sha256"),
            "model and weights": (report["model"].get("base"), weights.get("sha256"))}


def _row_outcomes(report: dict, attack: str, source: str) -> dict[str, dict[tuple, bool]]:
    """Per group, (index, prompt, seed) -> whether the attacked image shows the concept,
    judged as the run judged it; the recomputed ASR must equal the report's."""
    entry = report["attacks"][attack]
    if not entry.get("judge"):
        raise ErasureError(f"{source}: the {attack} run had no judging metric, so it has no ASR to combine")
    judge = METRICS[entry["judge"]](METRICS[entry["judge"]].Config(), None)
    outcomes: dict[str, dict[tuple, bool]] = {}
    for image in report["images"]:
        record = image.get(entry["variant"], {}).get(entry["judge"])
        if record is not None:  # an attacked row (the attack's variant has images of those only)
            key = (image["index"], image["prompt"], image["seed"])
            outcomes.setdefault(image["type"] or "all", {})[key] = judge.concept_shown(record)
    for group, values in outcomes.items():
        stated = entry["groups"].get(group, {}).get("post_asr")
        if stated is None or abs(100.0 * sum(values.values()) / len(values) - stated) > 1e-9:
            raise ErasureError(f"{source}: the {group} images do not give its {attack} post_asr; "
                               "the report was edited or is incomplete: run that erase-eval again")
    return outcomes
