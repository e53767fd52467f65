"""Choose an erasure by its seed: erase once per seed, attack every erasure on a tuning
prompt set, keep the one that holds best while keeping the retained concepts.

    erase --method advunlearn --concepts circle --model mini-sd --config configs/advunlearn/mini-sd.yaml \\
        --seeds 8-15 --choose-on scripts/advunlearn_prompts/choose-seed-240.csv --output circle-adv.safetensors

Why: AdvUnlearn's robustness to concept inversion moves with the erase seed as much as
with any setting tried (docs/advunlearn-mini-sd.md, "Choosing the erasure by its seed": 18.8-91.0% over 16
seeds of one config on mini-sd), so a user who needs one erasure can run several seeds
and keep the best, measured on prompts and seeds that the evaluation does not use. It is
no guarantee: on mini-sd the best of seeds 0-7 met a 20% target and the best of 8-15 did not.

The rule (``SeedChoiceConfig``; fixed before erase seeds 8-15 were run, and not a paper's):

1. Screen every seed: mean post-attack ASR of ``attack_runs`` runs of ``attack`` (seeds
   ``attack_seed``, ``attack_seed + 1``, ...; ``erase-eval --attack-restarts``) on the
   tuning set's erased rows; Acc_e, Acc_s and CLIP on its erased and retained rows
   (the world classifier on mini-sd, CLIP zero-shot accuracy elsewhere).
2. Eligible: Acc_e <= ``max_acc_e``, Acc_s >= ``min_acc_s_share`` x the base's, CLIP on
   retained rows at most ``max_clip_drop`` below the base's: the lower end of the change's
   95% interval, paired by row (``clip_check_on: interval``), or the estimate
   (``estimate``, the first rule's check, with a 2-point margin).
3. Confirm the ``confirm_top`` eligible seeds with the lowest screening ASR under each of
   ``confirm_attacks``.
4. Keep the confirmed seed whose worst attack (the highest of its ASRs) is lowest; on a
   tie, the one that keeps CLIP best.

Beside the rule, each seed's table entry also gives ``screening_any``: the share of the
tuning set's erased rows that at least one of the screening runs broke, what an attacker
who restarts would count (``report.json``'s ``attacks.<name>.restarts``); the rule itself
ranks by the mean. And ``clip_change_interval``, the 95% interval of the CLIP change paired
by row (``report.json``'s ``metrics.clip.change``). Why the interval: a filter on a noisy
estimate lets through the seeds whose noise was kind, and both picks of the first rule
(estimate >= -2 on 60 tuning rows) lost more CLIP on ``shapes/circle`` than on the tuning
set (-1.6 to -3.0 and -1.1 to -4.2).

Files: the candidates and their evaluations go to ``<output stem>.seeds/`` (rerunning
resumes there: finished erasures and images are reused, after checking that they were
made with the same settings); the chosen weights go to ``--output`` with the whole table
in their ``extra["seed_choice"]``, and the table also to ``<output stem>.seeds/choice.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from .atomic import atomic_write
from .errors import ErasureError

ACCURACY_METRICS = ("world", "clip-accuracy")  # the first in a report gives Acc_e and Acc_s


@dataclass
class SeedChoiceConfig:
    """How ``erase --seeds ... --choose-on CSV`` scores and picks (module docstring).

    Defaults: the rule fixed on 2026-11-30 for issue 17 before the seeds it was used on
    existed (docs/advunlearn-mini-sd.md, "Choosing the erasure by its seed"), with its CLIP
    check moved from the estimate (2-point margin) to the paired interval's lower end
    (that issue's 3-point target) before erase seeds 16-23 of the replay settings existed.
    """

    attack: str = "concept-inversion"
    attack_seed: int = 0
    attack_runs: int = 3
    confirm_attacks: list[str] = field(default_factory=lambda: ["unlearndiffatk"])
    confirm_top: int = 3
    max_acc_e: float = 10.0
    min_acc_s_share: float = 0.9
    max_clip_drop: float = 3.0
    clip_check_on: Literal["interval", "estimate"] = "interval"
    attack_options: dict[str, dict] = field(default_factory=dict)  # per attack, as erase-eval's --set attack.NAME.KEY


@dataclass
class Candidate:
    """One seed's erasure and what the tuning set measured of it (percentages; CLIP in
    points, the change's 95% interval paired by row); ``ineligible`` says which tuning
    target it missed ("" when none)."""

    seed: int
    weights: Path
    screening_asr: list[float] = field(default_factory=list)
    screening_any: float | None = None
    acc_e: float = 0.0
    acc_s: float = 0.0
    base_acc_s: float = 0.0
    clip_retained: float = 0.0
    base_clip_retained: float = 0.0
    clip_change_interval: list[float] | None = None
    confirming_asr: dict[str, float] = field(default_factory=dict)
    ineligible: str = ""

    @property
    def screening_mean(self) -> float:
        return sum(self.screening_asr) / len(self.screening_asr)

    @property
    def clip_change(self) -> float:
        return self.clip_retained - self.base_clip_retained

    @property
    def worst_asr(self) -> float:
        return max([self.screening_mean, *self.confirming_asr.values()])

    def record(self) -> dict:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "weights"}
        return {**fields, "screening_mean": self.screening_mean, "clip_change": self.clip_change,
                "worst_asr": self.worst_asr if self.confirming_asr else None}


def parse_seeds(text: str, max_seed: int) -> list[int]:
    """``"8-15"`` or ``"0,3,7"`` (or both: ``"0-3,9"``) as a list of distinct seeds."""
    seeds: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            first, dash, last = part.partition("-")
            seeds += list(range(int(first), int(last) + 1)) if dash else [int(first)]
    except ValueError:
        raise ErasureError(f"--seeds {text!r}: write a range or a list of whole numbers, e.g. --seeds 8-15") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ErasureError(f"--seeds {text!r}: give at least two distinct seeds, e.g. --seeds 8-15")
    if not all(0 <= s <= max_seed for s in seeds):
        raise ErasureError(f"--seeds {text!r}: every seed must be from 0 to {max_seed}")
    return seeds


def check_rule(config: SeedChoiceConfig) -> None:
    """Refuse, before any erasure, a rule that cannot run."""
    from .attacks import ATTACKS
    from .config import SEED_BOUNDS, consecutive_seeds_fit

    for name in [config.attack, *config.confirm_attacks, *config.attack_options]:
        if name not in ATTACKS:
            raise ErasureError(f"--choose-set: unknown attack {name!r}: use one of {', '.join(ATTACKS)}")
    if config.attack_runs < 1 or config.confirm_top < 1:
        raise ErasureError("--choose-set: attack_runs and confirm_top must be at least 1")
    if not consecutive_seeds_fit(config.attack_seed, config.attack_runs):
        raise ErasureError(f"--choose-set: attack_seed {config.attack_seed} leaves no room for {config.attack_runs} "
                           f"runs' seeds: give one from {SEED_BOUNDS['min']} to {SEED_BOUNDS['max'] - config.attack_runs + 1}")


def check_tuning_set(path: Path) -> None:
    """Refuse, before any erasure, a tuning set the rule cannot be measured on."""
    from .eval.prompts import load_prompt_set

    prompts = load_prompt_set(path)
    types = {row.type for row in prompts.rows}
    if not {"erased", "retained"} <= types:
        raise ErasureError(f"--choose-on {path}: the tuning set needs rows of type 'erased' and 'retained' (it has "
                           f"{', '.join(sorted(t or 'untyped' for t in types))}); see scripts/advunlearn_prompts/")
    if not prompts.class_names:
        raise ErasureError(f"--choose-on {path}: the rows need a 'class' column (Acc_e and Acc_s score the class "
                           "each image shows); see scripts/advunlearn_prompts/")


@dataclass(frozen=True)
class ChoiceRun:
    """What one seed choice works on.

    Attributes:
        output: where the chosen weights go; the candidates go to ``<output stem>.seeds/``.
        tuning_set: the prompt set the seeds are compared on (erased and retained rows).
        model: the base model, as ``erase --model`` takes it.
        device: for the evaluations (``None``: the GPU if there is one).
        overwrite: replace an existing ``output``.
        erase_one: ``erase_one(seed, path, resume)`` writes the seed's erasure to ``path``
            (resuming its checkpoint ``path.with_suffix(".checkpoint")`` when ``resume``).
        settings_of: the method config (a dict) ``erase_one`` uses for a seed.
    """

    output: Path
    tuning_set: Path
    model: str
    device: str | None
    overwrite: bool
    erase_one: Callable[[int, Path, bool], None]
    settings_of: Callable[[int], dict]

    @property
    def folder(self) -> Path:
        return self.output.with_name(self.output.stem + ".seeds")


def choose(run: ChoiceRun, config: SeedChoiceConfig, seeds: list[int]) -> Candidate:
    """Erase with each seed, measure, pick, write the chosen weights to ``run.output`` and
    return the chosen candidate; ``ErasureError`` if no seed meets the targets."""
    from .weights import EditedWeights

    candidates = [_erased(run, seed) for seed in seeds]
    for candidate in candidates:
        _screen(candidate, run, config)
    eligible = sorted((c for c in candidates if not c.ineligible), key=lambda c: c.screening_mean)
    for candidate in eligible[: config.confirm_top]:
        _confirm(candidate, run, config)
    chosen = min(eligible[: config.confirm_top], key=lambda c: (c.worst_asr, -c.clip_change), default=None)
    table = {"rule": dataclasses.asdict(config), "tuning_set": str(run.tuning_set),
             "chosen_seed": chosen.seed if chosen else None, "candidates": [c.record() for c in candidates]}
    _write_json(run.folder / "choice.json", table)
    if chosen is None:
        raise ErasureError(f"no seed of {','.join(map(str, seeds))} met the tuning targets (seed {seeds[0]}: "
                           f"{candidates[0].ineligible}; "
                           f"{run.folder / 'choice.json'} has every seed's): try more seeds or relax them with --choose-set")
    weights = EditedWeights.load(chosen.weights)
    dataclasses.replace(weights, extra={**weights.extra, "seed_choice": table}).save(run.output, overwrite=run.overwrite)
    print(summary(candidates, chosen, run.output))
    return chosen


def _erased(run: ChoiceRun, seed: int) -> Candidate:
    """The seed's erasure in the run's folder: made now, resumed from its checkpoint, or
    reused when an earlier run made it with the same settings."""
    weights = run.folder / f"seed-{seed}.safetensors"
    if not weights.exists():
        run.erase_one(seed, weights, weights.with_suffix(".checkpoint").is_dir())
    _check_same_settings(weights, run.settings_of(seed), run.model)
    return Candidate(seed, weights)


def _check_same_settings(weights: Path, settings: dict, model: str) -> None:
    from .weights import EditedWeights

    made = EditedWeights.load(weights)
    if made.config != json.loads(json.dumps(settings)) or made.base_model != model:
        raise ErasureError(f"{weights} was made with other settings or another model than this run's: delete "
                           f"{weights.parent} to start afresh, or give another --output")


def _evaluate(candidate: Candidate, run: ChoiceRun, name: str, attack: str, options: dict, runs: int = 1) -> dict:
    """One evaluation of the candidate on the tuning set, ``attack`` run ``runs`` times;
    every evaluation of a candidate shares its base and erased images (``share_images``),
    and every candidate the base ones."""
    from .eval import evaluate
    from .eval.generate import share_images

    output = run.folder / f"seed-{candidate.seed}" / name
    shared = {"base": run.folder / "base", "erased": run.folder / f"seed-{candidate.seed}" / "erased"}
    for variant, source in shared.items():
        share_images(source, output / variant)
    report = evaluate(run.model, candidate.weights, run.tuning_set, None, output, device=run.device, html=False,
                      attack=attack, attack_options={attack: options}, attack_restarts=runs,
                      attack_cache=run.folder / "attack-cache")
    for variant, source in shared.items():
        share_images(output / variant, source)
    return report.data


def _screen(candidate: Candidate, run: ChoiceRun, config: SeedChoiceConfig) -> None:
    options = {**config.attack_options.get(config.attack, {}), "seed": config.attack_seed}
    data = _evaluate(candidate, run, f"screen-{config.attack}", config.attack, options, config.attack_runs)
    restarts = data["attacks"][config.attack].get("restarts")  # absent after one run, or for an unseeded attack
    if restarts:
        candidate.screening_asr = restarts["groups"]["erased"]["per_run"]
        candidate.screening_any = restarts["groups"]["erased"]["any"]
    else:
        candidate.screening_asr = [_post_asr(data, config.attack)]
    accuracy = next(data["metrics"][m] for m in ACCURACY_METRICS if m in data["metrics"])
    candidate.acc_e = accuracy["erased"]["erasure"]["acc_e"]
    candidate.acc_s = accuracy["erased"]["erasure"]["acc_s"]
    candidate.base_acc_s = accuracy["base"]["erasure"]["acc_s"]
    candidate.clip_retained = data["metrics"]["clip"]["erased"]["headline"]["CLIP score (retained)"]
    candidate.base_clip_retained = data["metrics"]["clip"]["base"]["headline"]["CLIP score (retained)"]
    candidate.clip_change_interval = data["metrics"]["clip"]["change"]["CLIP score (retained)"]["interval"]
    candidate.ineligible = missed_targets(candidate, config)


def missed_targets(candidate: Candidate, config: SeedChoiceConfig) -> str:
    """The tuning targets ``candidate`` misses under ``config`` ("" when it meets them all)."""
    failed = [f"Acc_e {candidate.acc_e:.1f} > {config.max_acc_e:g}"] if candidate.acc_e > config.max_acc_e else []
    if candidate.acc_s < config.min_acc_s_share * candidate.base_acc_s:
        failed.append(f"Acc_s {candidate.acc_s:.1f} < {config.min_acc_s_share:g} x base {candidate.base_acc_s:.1f}")
    if config.clip_check_on == "interval" and (low := candidate.clip_change_interval[0]) < -config.max_clip_drop:
        failed.append(f"CLIP retained {candidate.clip_change:+.1f}, interval down to {low:+.1f} < -{config.max_clip_drop:g}")
    elif config.clip_check_on == "estimate" and candidate.clip_change < -config.max_clip_drop:
        failed.append(f"CLIP retained {candidate.clip_change:+.1f} < -{config.max_clip_drop:g}")
    return "; ".join(failed)


def _confirm(candidate: Candidate, run: ChoiceRun, config: SeedChoiceConfig) -> None:
    for attack in config.confirm_attacks:
        data = _evaluate(candidate, run, attack, attack, config.attack_options.get(attack, {}))
        candidate.confirming_asr[attack] = _post_asr(data, attack)


def _post_asr(data: dict, attack: str) -> float:
    return data["attacks"][attack]["groups"]["erased"]["post_asr"]


def _write_json(path: Path, value: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8"),
                 replace=True)


def summary(candidates: list[Candidate], chosen: Candidate, output: Path) -> str:
    """The table ``erase --seeds`` prints: one line per seed, the chosen one marked."""
    from .eval.tables import fmt_change

    lines = ["seed  screening ASR (mean)  any run  confirming ASR        Acc_e  Acc_s  CLIP ret. [95%]          note"]
    for c in candidates:
        confirming = ", ".join(f"{a} {v:.1f}" for a, v in c.confirming_asr.items()) or "-"
        note = "chosen" if c is chosen else c.ineligible
        any_run = "-" if c.screening_any is None else f"{c.screening_any:.1f}"
        clip = fmt_change(c.clip_change, c.clip_change_interval)
        lines.append(f"{c.seed:<5} {c.screening_mean:>20.1f}  {any_run:>7}  {confirming:<20} {c.acc_e:>5.1f}  {c.acc_s:>5.1f}  "
                     f"{clip:<24} {note}")
    return "\n".join(lines + [f"chose seed {chosen.seed} -> {output}"])
