"""Attacked images: how much of an erased concept an adversary gets back.

``evaluate(..., attack=["unlearndiffatk", "ring-a-bell"])`` (``erase-eval --attack
unlearndiffatk,ring-a-bell``) adds one variant per attack, ``attacked-<name>``: for
every ``erased`` and ``synonym`` row (every row of an untyped set) the attacked model
generates from what the attack found for the row (``erasure.attacks``), with the row's
seed and guidance, so each attacked image pairs with the row's base and erased images.
``retained`` rows are not attacked: nothing was erased from them. With ``--base-only``
the model is attacked as its own base (nothing erased): a sanity check.

What is written, per attack, in ``<output>/attacks/``:

- ``<name>.csv``: the prompts found (discrete attacks; concept inversion's prompts hold
  its placeholder token), in the prompt-set format (``case_number, prompt,
  evaluation_seed, evaluation_guidance, class, type`` plus ``original_prompt``,
  ``row_index``, ``steps``, and UnlearnDiffAtk's ``success_any_step``):
  ``erase-eval --prompts <output>/attacks/<name>.csv --weights ...`` replays them on any
  model; on the same model and settings it makes the same images (generation is one
  code path, ``erasure.generation.run_pipeline``).
- ``<name>.safetensors``: closed-form's embeddings (``row/<index>/hidden``,
  ``row/<index>/pooled``) or concept inversion's token vectors (``<circle-inv>``; SDXL
  also ``<circle-inv>.text_encoder_2``), with the attack's settings in the metadata.
- ``<name>.jsonl``: every result with what it was computed against (the cache; its
  folder is ``attack_cache``). A rerun reuses results whose attack settings, model,
  weights and generation settings match, so an interrupted run resumes. Ring-A-Bell reads
  only the base model's text encoder, so its results do not depend on the erased
  weights: runs on one base share them through a common ``attack_cache``.

Definitions (``report.json``'s ``attacks`` entry, ``report.md``'s Attacks table), with
the judge: the first of the run's metrics that classifies the concept per image (the
world classifier, CLIP zero-shot accuracy, ResNet-50, else NudeNet's "any counted
detection"):

- pre-attack ASR: the share of erased rows whose erased-model image (base-only: the
  model's image) is classified as the concept; for accuracy metrics, Acc_e;
- post-attack ASR: the share of erased rows whose ``attacked-<name>`` image (the
  attack's final prompt, embedding or token) is classified as the concept;
- UnlearnDiffAtk's own "success at any step": the share of erased rows that succeeded
  before the attack or at any of its in-loop checks (the authors' ASR). With
  stop-on-success and deterministic generation it equals post-attack ASR up to batching
  noise in the pixels.

Synonym rows get the same numbers, reported separately.

Restarts (``erase-eval --attack-restarts K``): an attacker who fails runs the attack
again with another seed. Each seeded attack then runs K times, with seeds ``seed``,
``seed + 1``, ... (closed-form, a deterministic solve, once): the first run is the
``attacked-<name>`` variant and every number above; run ``i`` adds the variant
``attacked-<name>-restart<i>`` and its files ``<name>-restart<i>.csv`` /
``.safetensors``. ``report.json``'s ``attacks.<name>.restarts`` holds, per group, each
run's post-attack ASR, the pooled ASR and the any-of-K ASR, the share of rows that at
least one run breaks, with Wilson intervals (``erasure.eval.restarts``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..atomic import atomic_write
from ..attacks import Attack, AttackResult, AttackTarget, build_attack, check_budget, parse_attack_names
from ..attacks.concept_inversion import encode_with_token
from ..attacks.tokens import SLOT
from ..config import consecutive_seeds_fit
from ..errors import ErasureError
from .prompts import PromptRow
from .restarts import outcome_summary

ATTACKED_TYPES = ("erased", "synonym")  # the rows whose concept was erased
VARIANT_PREFIX = "attacked-"
CSV_COLUMNS = ["case_number", "prompt", "evaluation_seed", "evaluation_guidance", "class", "type", "original_prompt",
               "row_index", "steps"]


def variant_name(attack_name: str) -> str:
    """The report column and image folder of an attack: ``attacked-<name>``."""
    return VARIANT_PREFIX + attack_name


@dataclass
class AttackPlan:
    """The attacks of a run and the rows they attack, checked before anything is generated.

    Attributes:
        attacks: built attacks, with their resolved configs.
        rows: the erased and synonym rows (every row of an untyped set).
        restarts: per attack, its runs (``attack_runs``; absent: 1).
    """

    attacks: list[Attack]
    rows: list[PromptRow]
    restarts: dict[str, int] = field(default_factory=dict)

    def attack_runs(self, attack: Attack) -> list[Attack]:
        """The attack, then its restarts: its settings with the next seeds, ``restarts``
        runs in all (one for an attack its seed does not change)."""
        if not attack.seeded:
            return [attack]
        runs = [attack]
        for restart in range(1, self.restarts.get(attack.name, 1)):
            again = type(attack)(dataclasses.replace(attack.config, seed=attack.config.seed + restart))
            again.notes = dict(attack.notes)
            runs.append(again)
        return runs


def plan_attacks(names: str | Sequence[str] | None, options: Mapping[str, Mapping] | None, budget: float, model: str,
                 rows: list[PromptRow], types: Sequence[str] = ATTACKED_TYPES, limit: int | None = None,
                 restarts: int | Mapping[str, int] = 1) -> AttackPlan | None:
    """The attacks to run, or ``None``; a one-line error naming the fix for bad input.

    Args:
        names: ``"closed-form,ring-a-bell"``, a list of names, or ``None``.
        options: per attack, config overrides (``--set attack.<name>.<key>=``).
        budget: ``--attack-budget`` (> 0).
        model: the base model's name (selects ``configs/attacks/<name>/<model>.yaml``).
        rows: the prompt set's rows.
        types: the row types attacked (of ``erased``, ``synonym``).
        limit: attack only the first ``limit`` rows of each type.
        restarts: runs of each seeded attack, with consecutive seeds (module docstring);
            a mapping: per attack named in it.
    """
    options = dict(options or {})
    counts = list(restarts.values()) if isinstance(restarts, Mapping) else [restarts]
    for count in counts:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ErasureError(f"--attack-restarts {count} must be a whole number of at least 1 (1: each attack runs once)")
    if names is None:
        if max(counts, default=1) > 1:
            raise ErasureError("--attack-restarts is given without --attack: add --attack NAME or drop it")
        if options:
            raise ErasureError(f"attack options are set for {next(iter(options))!r}, but no --attack is given: add "
                               "--attack NAME or drop the options")
        return None
    chosen = parse_attack_names(names)
    check_budget(budget)
    runs = dict(restarts) if isinstance(restarts, Mapping) else {name: restarts for name in chosen}
    stray = sorted((set(options) | set(runs)) - set(chosen))
    if stray:
        raise ErasureError(f"options are set for attack {stray[0]!r}, which is not in --attack: add it or drop the option")
    stray_types = sorted(set(types) - set(ATTACKED_TYPES))
    if stray_types or not types:
        raise ErasureError(f"attack types {', '.join(stray_types) or 'none'}: attack rows of {' and/or '.join(ATTACKED_TYPES)}")
    if limit is not None and not (isinstance(limit, int) and limit >= 1):
        raise ErasureError(f"--attack-limit {limit} must be a whole number of at least 1")
    attacks = [build_attack(name, model, options.get(name), budget) for name in chosen]
    for attack in attacks:
        count = runs.get(attack.name, 1)
        if attack.seeded and not consecutive_seeds_fit(attack.config.seed, count):
            raise ErasureError(f"attack {attack.name} seed {attack.config.seed} leaves no room for {count} restarts' "
                               f"seeds: use --set attack.{attack.name}.seed=0")
    attacked = attacked_rows(rows, types, limit)
    if not attacked:
        raise ErasureError(f"--attack: the prompt set has no {' or '.join(types)} rows to attack: "
                           "use a set with them, or drop --attack")
    return AttackPlan(attacks, attacked, runs)


def attacked_rows(rows: list[PromptRow], types: Sequence[str] = ATTACKED_TYPES, limit: int | None = None) -> list[PromptRow]:
    """The rows of ``types`` (every row of a set without types), the first ``limit`` of each type.

    Args:
        rows: the prompt set's rows.
        types: row types to attack.
        limit: rows per type, or ``None`` for all.
    """
    typed = any(row.type for row in rows)
    chosen, taken = [], {}
    for row in rows:
        group = row.type if typed else "all"
        if typed and group not in types:
            continue
        taken[group] = taken.get(group, 0) + 1
        if limit is None or taken[group] <= limit:
            chosen.append(row)
    return chosen


def base_values(pipe, tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The pipeline's current values of the parameters erased weights change, by component
    (today's weight files change the UNet; ``text_encoder.``-prefixed names, when weight
    files hold them, go to that component). References, not copies: taken before the
    weights are swapped in, they stay the base values.

    Args:
        pipe: the base pipeline, before the weights are applied.
        tensors: the erased weights' tensors by name.
    """
    values: dict[str, dict[str, torch.Tensor]] = {}
    for name in tensors:
        component, dot, rest = name.partition(".")
        if not (dot and component in ("unet", "text_encoder", "text_encoder_2")):
            component, rest = "unet", name
        params = dict(getattr(pipe, component).named_parameters())
        values.setdefault(component, {})[rest] = params[rest].data
    return values


def judging_metric(scorers: list):
    """The metric that decides whether an image shows the concept: the first of the run's
    metrics that can (classifiers, NudeNet), or ``None``."""
    return next((scorer for scorer in scorers if scorer.judges_concept), None)


def make_judge(metric):
    """``judge(images, rows) -> [bool]`` from a loaded metric, or ``None``."""
    if metric is None:
        return None

    def judge(images: list, rows: list) -> list[bool]:
        return [metric.concept_shown(record) for record in metric.score(images, rows)]

    return judge


# ---- running an attack, with its cache ----


def identity_of(attack: Attack, target: AttackTarget, model_id: str, weights_sha256: str | None,
                rows: list[PromptRow]) -> str:
    """What a result was computed against, as a hash: the attack's settings, the model,
    the weights (unless the attack reads only the base), the generation settings, and,
    for attacks whose units share rows, the attacked rows."""
    parts = {
        "attack": attack.name,
        "config": dataclasses.asdict(attack.config),
        "model": model_id,
        "weights": weights_sha256 if attack.reads_attacked_model else None,
        "settings": target.settings.record(),
        "concepts": list(target.concepts),
        "judge": [target.judge_name, target.judge_settings],
        "rows": None if attack.scope == "row" else sorted((row.prompt, row.label, row.type) for row in rows),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def obtain_results(attack: Attack, target: AttackTarget, rows: list[PromptRow], cache: Path, identity: str,
                   state=None) -> tuple[list[AttackResult], int]:
    """The attack's result for every row: cached ones reused, the rest computed on the
    main process and appended to the cache (in chunks, so an interrupted run resumes);
    other processes read them back. Returns the results and how many came from the cache.

    Args:
        attack: the attack.
        target: the model under attack.
        rows: the rows to attack.
        cache: the folder of ``<name>.jsonl``.
        identity: ``identity_of(...)``.
        state: accelerate's process state, or ``None`` (one process).
    """
    path = cache / f"{attack.name}.jsonl"
    main = state is None or state.is_main_process
    if not attack.cached:  # cheap and deterministic: every process computes it
        return attack.run(target, rows), 0
    known = read_cache(path, identity)
    reused = sum(_row_key(row) in known for row in rows)
    if main:
        missing = [row for row in rows if _row_key(row) not in known]
        for chunk in _chunks(attack, missing):
            for row, result in zip(chunk, attack.run(target, chunk)):
                known[_row_key(row)] = result
                append_cache(path, identity, row, result)
    if state is not None:
        state.wait_for_everyone()
        if not main:
            known = read_cache(path, identity)
    results = []
    for row in rows:
        if _row_key(row) not in known:
            raise ErasureError(f"{path} lacks the result of row {row.index}: rerun to complete it")
        results.append(dataclasses.replace(known[_row_key(row)], row_index=row.index))
    return results, reused


def _row_key(row: PromptRow) -> str:
    return json.dumps([row.prompt, row.seed, row.guidance, row.label, row.type])


def _chunks(attack: Attack, rows: list[PromptRow]) -> list[list[PromptRow]]:
    """Rows in the pieces an attack can run alone: batches of rows for per-row attacks
    (each appended to the cache as it finishes), all at once otherwise."""
    if attack.scope != "row":
        return [rows] if rows else []
    size = getattr(attack.config, "batch_rows", len(rows)) or 1
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def read_cache(path: Path, identity: str) -> dict[str, AttackResult]:
    """The cached results of one identity, by row key (later lines win)."""
    found: dict[str, AttackResult] = {}
    if not path.is_file():
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut by an interrupted write
            continue
        if entry.get("identity") != identity:
            continue
        tokens = entry.get("tokens")
        result = AttackResult(**entry["result"])
        if tokens:
            result.tokens = {name: torch.tensor(values) for name, values in tokens.items()}
        found[entry["row"]] = result
    return found


def append_cache(path: Path, identity: str, row: PromptRow, result: AttackResult) -> None:
    """Add one result to the cache (one JSON line, flushed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens = None if result.tokens is None else {name: v.float().tolist() for name, v in result.tokens.items()}
    line = json.dumps({"identity": identity, "row": _row_key(row), "result": result.record(), "tokens": tokens})
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()


# ---- what the attacked variant generates from ----


@dataclass
class EmbeddingConditioning:
    """Rows generated from embeddings (closed-form), with the pipeline's negative."""

    embeddings: dict[int, object]

    def pipeline_inputs(self, pipe, rows: list) -> dict:
        from ..adapters import PromptEmbeddings, adapter_for

        adapter = adapter_for(pipe)
        cond = PromptEmbeddings.cat([self.embeddings[row.index] for row in rows])
        cond = PromptEmbeddings(cond.hidden.to(adapter.device), cond.token_counts,
                                None if cond.pooled is None else cond.pooled.to(adapter.device))
        return adapter.pipeline_inputs(cond, adapter.negative_embeddings(len(rows)))


@dataclass
class TokenConditioning:
    """Rows whose prompts hold an inverted token (concept inversion), encoded with the
    token's vectors and generated with the pipeline's negative."""

    tokens: dict[int, tuple[str, dict[str, torch.Tensor]]]  # row index -> (placeholder, vector per text encoder)

    def pipeline_inputs(self, pipe, rows: list) -> dict:
        from ..adapters import adapter_for

        adapter = adapter_for(pipe)
        marked = [row.prompt.replace(self.tokens[row.index][0], SLOT) for row in rows]
        vectors = [torch.stack([self.tokens[row.index][1][name] for row in rows]).to(adapter.device)
                   for name in adapter.text_encoders()]
        with torch.no_grad():
            cond = encode_with_token(adapter, marked, vectors)
        return adapter.pipeline_inputs(cond, adapter.negative_embeddings(len(rows)))


@dataclass
class AttackRun:
    """One attack's results and the variant generated from them.

    Attributes:
        attack: the attack, with its resolved config.
        results: one per attacked row.
        rows: the variant's rows (prompts replaced for discrete attacks).
        conditioning: what the variant generates from besides prompts, or ``None``.
        reused: results taken from the cache.
        seconds: wall time of this run's attack (not counting reused results).
        restart: which run of the attack this is (1: the first; ``AttackPlan.attack_runs``).
        files: what was written.
    """

    attack: Attack
    results: list[AttackResult]
    rows: list[PromptRow]
    conditioning: object | None
    reused: int = 0
    seconds: float = 0.0
    restart: int = 1
    files: dict[str, str] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        """The name of its files: ``<name>``, or ``<name>-restart<i>`` for a restart."""
        return self.attack.name + (f"-restart{self.restart}" if self.restart > 1 else "")

    @property
    def variant(self) -> str:
        return variant_name(self.stem)

    def record(self) -> dict:
        """What each attacked image records about the attack (part of its PNG record)."""
        return {"name": self.attack.name, "config": dataclasses.asdict(self.attack.config)}


def attack_run(attack: Attack, results: list[AttackResult], rows: list[PromptRow], reused: int,
               seconds: float, restart: int = 1) -> AttackRun:
    """The variant's rows and conditioning from the results.

    Args:
        attack: the attack.
        results: one per row of ``rows``.
        rows: the attacked rows.
        reused: results taken from the cache.
        seconds: wall time of the attack in this run.
        restart: which run of the attack this is (1: the first).
    """
    if attack.output == "embedding":
        conditioning = EmbeddingConditioning({r.row_index: r.embedding for r in results})
        return AttackRun(attack, results, list(rows), conditioning, reused, seconds, restart)
    variant_rows = [dataclasses.replace(row, prompt=result.prompt) for row, result in zip(rows, results)]
    conditioning = None
    if attack.output == "token":
        conditioning = TokenConditioning({r.row_index: (_placeholder_in(r.prompt), r.tokens) for r in results})
    return AttackRun(attack, results, variant_rows, conditioning, reused, seconds, restart)


def _placeholder_in(prompt: str) -> str:
    start = prompt.index("<")
    return prompt[start:prompt.index(">", start) + 1]


# ---- files ----


def write_outputs(run: AttackRun, rows: list[PromptRow], folder: Path) -> dict[str, str]:
    """``<name>.csv`` (prompts) and ``<name>.safetensors`` (embeddings, tokens) in ``folder``.

    Args:
        run: the attack's run.
        rows: the attacked rows (original prompts).
        folder: ``<output>/attacks``.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    metadata = {"attack": json.dumps(run.record(), sort_keys=True, default=str)}
    if run.attack.output in ("prompt", "token"):
        path = folder / f"{run.stem}.csv"
        columns = CSV_COLUMNS + (["success_any_step"] if any(r.success_any_step is not None for r in run.results) else [])
        lines = [_csv_row(row, result, columns) for row, result in zip(rows, run.results)]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(lines)
        atomic_write(path, lambda tmp: Path(tmp).write_text(buffer.getvalue(), encoding="utf-8"))
        files["csv"] = str(path)
    tensors = {}
    if run.attack.output == "embedding":
        for result in run.results:
            tensors[f"row/{result.row_index}/hidden"] = result.embedding.hidden[0].detach().float().cpu().contiguous()
            if result.embedding.pooled is not None:
                tensors[f"row/{result.row_index}/pooled"] = result.embedding.pooled[0].detach().float().cpu().contiguous()
    if run.attack.output == "token":
        for result in run.results:
            token = _placeholder_in(result.prompt)
            for i, (name, vector) in enumerate(result.tokens.items()):
                tensors[token if i == 0 else f"{token}.{name}"] = vector.float().contiguous()
    if tensors:
        path = folder / f"{run.stem}.safetensors"
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
        files["safetensors"] = str(path)
    return files


def _csv_row(row: PromptRow, result: AttackResult, columns: list[str]) -> dict:
    values = {"case_number": row.case_number, "prompt": result.prompt, "evaluation_seed": row.seed,
              "evaluation_guidance": "" if row.guidance is None else row.guidance, "class": row.label, "type": row.type,
              "original_prompt": row.prompt, "row_index": row.index, "steps": result.steps,
              "success_any_step": "" if result.success_any_step is None else result.success_any_step}
    return {column: values[column] for column in columns}


# ---- numbers for the report ----


def asr_summary(run: AttackRun, rows: list[PromptRow], judge_name: str | None, before: list[bool] | None,
                after: list[bool] | None, against: str) -> dict:
    """``report.json``'s entry of one attack: settings, cost, and the ASRs (module docstring).

    Args:
        run: the attack's run.
        rows: the attacked rows.
        judge_name: the judging metric, or ``None``.
        before: per row, whether the unattacked image shows the concept (``None``: no judge).
        after: per row, whether the attacked image does.
        against: the variant ``before`` comes from (``erased``; base-only: ``base``).
    """
    results = run.results
    groups = {}
    for group, positions in _group_positions(rows).items():
        entry = {"n": len(positions)}
        if before is not None:
            entry["pre_asr"] = _share(before[i] for i in positions)
            entry["post_asr"] = _share(after[i] for i in positions)
        any_step = [results[i].success_any_step for i in positions]
        if all(v is not None for v in any_step) and any_step:
            entry["success_any_step"] = _share(any_step)
        groups[group] = entry
    units = _units(run.attack, rows)
    seconds = sum(r.seconds for r in results)
    cpu_seconds = sum(r.cpu_seconds for r in results)
    return {
        **run.attack.record(),
        "variant": run.variant,
        "output": run.attack.output,
        "judge": judge_name,
        "pre_attack_variant": against,
        "groups": groups,
        "rows": len(rows),
        "skipped": sum(r.skipped is not None for r in results),
        "units": units,
        "scope": run.attack.scope,
        "seconds": round(seconds, 3),
        "seconds_per_unit": round(seconds / units, 3) if units else None,
        "cpu_seconds_per_unit": round(cpu_seconds / units, 3) if units else None,
        "seconds_this_run": round(run.seconds, 3),
        "reused_from_cache": run.reused,
        "steps": {"mean": _share_plain([r.steps for r in results]), "max": max((r.steps for r in results), default=0)},
        "files": run.files,
    }


def restarts_summary(runs: list[AttackRun], rows: list[PromptRow], after: list[list[bool]] | None) -> dict:
    """``report.json``'s ``attacks.<name>.restarts``: the runs' seeds and variants and, with a
    judge, per group ``erasure.eval.restarts.outcome_summary`` (each run's ASR, pooled, any-of-k).

    Args:
        runs: the attack's runs, the first one first.
        rows: the attacked rows.
        after: per run, per row, whether the attacked image shows the concept (``None``: no judge).
    """
    entry = {"runs": len(runs), "seeds": [run.attack.config.seed for run in runs], "variants": [run.variant for run in runs]}
    if after is not None:
        entry["groups"] = {group: outcome_summary([[shown[i] for i in positions] for shown in after])
                           for group, positions in _group_positions(rows).items()}
    return entry


def _group_positions(rows: list[PromptRow]) -> dict[str, list[int]]:
    """Per attacked group (``erased``, ``synonym``; ``all`` for an untyped set), its rows' positions."""
    types = [t for t in ATTACKED_TYPES if any(row.type == t for row in rows)]
    if not types:
        return {"all": list(range(len(rows)))}
    return {t: [i for i, row in enumerate(rows) if row.type == t] for t in types}


def _units(attack: Attack, rows: list[PromptRow]) -> int:
    if attack.scope == "prompt":
        return len({row.prompt for row in rows})
    if attack.scope == "concept":
        return len({row.label for row in rows}) or 1
    return len(rows)


def _share(values) -> float | None:
    values = [bool(v) for v in values]
    return 100.0 * sum(values) / len(values) if values else None


def _share_plain(values: list[int]) -> float:
    return float(sum(values) / len(values)) if values else 0.0
