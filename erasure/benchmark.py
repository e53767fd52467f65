"""The mini-sd benchmark: every method variant on the same erasure tasks, the same seeds, one table.

    erase-bench                        # every task, variant and attack (time: README, Benchmark)
    erase-bench --attacks closed-form  # a subset of the attack columns
    erase-bench --quick                # the CI version (tests/test_benchmark.py)
    erase-bench --readme README.md     # also write the table between the file's benchmark markers

Variants are the YAML files of ``configs/benchmark/methods/``, one per row of the table
(the file name is the row's name): which registered method, its config file and
settings, its settings in quick mode and the floors the quick mode must reach, and
settings per kind of concept (MACE's colour and style templates). A method joins the
benchmark by a new file there. Tasks are ``configs/benchmark/tasks.yaml``: prompt sets
of ``eval_prompts/``, each with erased, retained and synonym rows.

Each variant erases each task's concepts, through the ``erase`` command in a child
process (so that the wall time and peak memory are the erasure's own, loading
included; the child records its peak resident memory in the weights' ``extra``, and
the GPU's peak allocation when there is one), or, in quick mode, in this process with
the already loaded pipeline (time: the erase call alone; memory: this process's peak
so far). Every accuracy comes from the evaluator (``erasure.evaluate``) on images
generated with each row's own seed: the world classifier's Acc_e, Acc_s, Acc_g and H_o
(MACE's protocol), mini-clip's CLIP score on the retained rows, and each attack's
post-attack ASR (``erasure.eval.attack``): the share of the task's first erased rows
whose attacked image the world classifier calls the concept. Which attacks run where,
with which settings and on how many rows, is ``configs/benchmark/attacks.yaml``; the base
model is attacked as its own base. The base model's images are made once per task and
shared by every variant (hard links; the evaluator verifies each image's record before
reusing it), attack results are cached per task (Ring-A-Bell's, which depend on the
base model only, are searched once per task for every variant), and an erasure is
reused when its record matches, so a rerun into the same folder resumes where it stopped.

Writes ``<output>/benchmark.json`` and ``<output>/benchmark.md``; per task and variant
the weights, the erase record (and log) and the evaluator's report folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .config import configs_dir, read_yaml
from .errors import ErasureError

METRICS = ["world", "clip"]
SEED = 0  # the erase command's default --seed, for in-process erasures too
BATCH_SIZE = 64
VARIANT_KEYS = {"method", "config", "settings", "per_kind", "quick"}
QUICK_KEYS = {"settings", "floors"}
FLOOR_KEYS = {"erased_drop", "retained_share"}
PER_KIND_KEYS = {"config", "settings"}
TASK_KEYS = {"concepts", "prompts", "description", "kind", "quick_rows"}
ATTACK_FILE_KEYS = {"rows", "quick_rows", "attacks"}
ATTACK_KEYS = {"settings", "tasks", "quick", "quick_settings"}


@dataclass(frozen=True)
class Task:
    """An erasure task: what is erased and the prompt set that measures it.

    Attributes:
        name: the task's key in ``tasks.yaml``.
        concepts: the concepts erased together.
        prompts: a bundled prompt set with erased, retained and synonym rows.
        description: the table's heading.
        kind: ``shape``, ``colour`` or ``style``; selects a variant's ``per_kind`` settings.
        quick_rows: rows used in quick mode; ``None``: the task is not in quick mode.
    """

    name: str
    concepts: tuple[str, ...]
    prompts: str
    description: str
    kind: str
    quick_rows: int | None = None


@dataclass(frozen=True)
class Variant:
    """One row of the table: a registered method with its mini-sd settings.

    Attributes:
        name: the YAML file's stem.
        method: a name registered in ``erasure.methods.METHODS``.
        config: a config file, relative to ``configs/``, or ``None``.
        settings: config fields set on top of ``config``.
        per_kind: per task kind, a ``config`` replacing ``config`` and more ``settings``.
        quick_settings: config fields set on top of those in quick mode.
        floors: what quick mode must reach: ``erased_drop`` (the mean fall of Acc_e over
            the quick tasks, in points) and ``retained_share`` (Acc_s per task as a share
            of the base model's).
        source: the YAML file.
    """

    name: str
    method: str
    config: str | None = None
    settings: dict = field(default_factory=dict)
    per_kind: dict = field(default_factory=dict)
    quick_settings: dict = field(default_factory=dict)
    floors: dict = field(default_factory=dict)
    source: Path | None = None

    def erase_arguments(self, task: Task, quick: bool) -> tuple[Path | None, dict]:
        """The config file and the settings this variant erases ``task`` with.

        Args:
            task: the task (its ``kind`` selects ``per_kind``).
            quick: add ``quick_settings``.
        """
        kind = self.per_kind.get(task.kind, {})
        config = kind.get("config", self.config)
        settings = {**self.settings, **kind.get("settings", {}), **(self.quick_settings if quick else {})}
        return (configs_dir() / config if config else None), settings


@dataclass(frozen=True)
class AttackColumn:
    """An attack's column: where it runs and with which settings (``attacks.yaml``).

    Attributes:
        name: a registered attack (``erasure.attacks.ATTACKS``).
        settings: config fields on top of ``configs/attacks/<name>/mini-sd.yaml``.
        tasks: the tasks it runs on; ``None``: all.
        quick: the variants it attacks in quick mode; ``None``: all; empty: none.
        quick_settings: config fields on top of ``settings`` in quick mode.
    """

    name: str
    settings: dict = field(default_factory=dict)
    tasks: tuple[str, ...] | None = None
    quick: tuple[str, ...] | None = ()
    quick_settings: dict = field(default_factory=dict)

    def runs_on(self, task: Task, variant: str, quick: bool) -> bool:
        """Whether it attacks ``variant`` (or ``"base"``) on ``task``."""
        if self.tasks is not None and task.name not in self.tasks:
            return False
        if not quick or self.quick is None:
            return True
        return bool(self.quick) and variant in (*self.quick, "base")

    def options(self, quick: bool) -> dict:
        return {**self.settings, **(self.quick_settings if quick else {})}


@dataclass(frozen=True)
class AttackPlan:
    """``configs/benchmark/attacks.yaml``: the columns, and the erased rows each attacks."""

    columns: dict[str, AttackColumn]
    rows: int
    quick_rows: int

    def rows_for(self, quick: bool) -> int:
        return self.quick_rows if quick else self.rows


# ---- the tasks and variants, from configs/benchmark/ ----


def benchmark_dir() -> Path:
    return configs_dir() / "benchmark"


def load_tasks(path: Path | None = None) -> dict[str, Task]:
    """The tasks of ``configs/benchmark/tasks.yaml`` (or ``path``), in file order.

    Args:
        path: another tasks file.
    """
    path = Path(path) if path is not None else benchmark_dir() / "tasks.yaml"
    tasks = {}
    for name, spec in read_yaml(path).items():
        _check_keys(spec, TASK_KEYS, f"{path}: task {name!r}")
        tasks[name] = Task(name, tuple(spec["concepts"]), spec["prompts"], spec["description"], spec["kind"],
                           spec.get("quick_rows"))
    return tasks


def load_variants(folder: Path | None = None) -> dict[str, Variant]:
    """Every variant of ``configs/benchmark/methods/`` (or ``folder``), by file name.

    Args:
        folder: another folder of variant files.

    Raises:
        ErasureError: a file names an unregistered method, a missing config file or an
            unknown key.
    """
    from .methods import get_method

    folder = Path(folder) if folder is not None else benchmark_dir() / "methods"
    variants = {}
    for path in sorted(folder.glob("*.yaml"), key=lambda p: p.stem):
        spec = read_yaml(path)
        _check_keys(spec, VARIANT_KEYS, str(path), required={"method"})
        quick = spec.get("quick", {})
        _check_keys(quick, QUICK_KEYS, f"{path}: quick")
        _check_keys(quick.get("floors", {}), FLOOR_KEYS, f"{path}: quick.floors")
        for kind, overrides in spec.get("per_kind", {}).items():
            _check_keys(overrides, PER_KIND_KEYS, f"{path}: per_kind.{kind}")
        try:
            get_method(spec["method"])
        except ErasureError as error:
            raise ErasureError(f"{path}: {error}") from None
        for config in [spec.get("config"), *(k.get("config") for k in spec.get("per_kind", {}).values())]:
            if config and not (configs_dir() / config).is_file():
                raise ErasureError(f"{path}: config {config!r} is not a file under {configs_dir()}")
        variants[path.stem] = Variant(path.stem, spec["method"], spec.get("config"), spec.get("settings", {}),
                                      spec.get("per_kind", {}), quick.get("settings", {}), quick.get("floors", {}),
                                      path)
    if not variants:
        raise ErasureError(f"no benchmark variants in {folder}: add a <name>.yaml per method variant")
    return variants


def load_attacks(path: Path | None = None) -> AttackPlan:
    """The attack columns of ``configs/benchmark/attacks.yaml`` (or ``path``), in file order.

    Args:
        path: another attacks file.
    """
    from .attacks import get_attack

    path = Path(path) if path is not None else benchmark_dir() / "attacks.yaml"
    spec = read_yaml(path)
    _check_keys(spec, ATTACK_FILE_KEYS, str(path), required=ATTACK_FILE_KEYS)
    columns = {}
    for name, column in spec["attacks"].items():
        column = column or {}
        _check_keys(column, ATTACK_KEYS, f"{path}: attack {name!r}")
        try:
            get_attack(name)
        except ErasureError as error:
            raise ErasureError(f"{path}: {error}") from None
        quick = column.get("quick")
        columns[name] = AttackColumn(name, column.get("settings", {}), _tuple(column.get("tasks")),
                                     None if quick == "all" else tuple(quick or ()), column.get("quick_settings", {}))
    return AttackPlan(columns, int(spec["rows"]), int(spec["quick_rows"]))


def _tuple(values) -> tuple | None:
    return None if values is None else tuple(values)


def _check_keys(spec, allowed: set[str], where: str, required: set[str] = frozenset()) -> None:
    if not isinstance(spec, dict):
        raise ErasureError(f"{where} must be a mapping")
    unknown, missing = set(spec) - allowed, set(required) - set(spec)
    if unknown:
        raise ErasureError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(allowed))}")
    if missing:
        raise ErasureError(f"{where}: missing key(s) {', '.join(sorted(missing))}")


# ---- the table's columns ----


@dataclass(frozen=True)
class Column:
    """A column of the table: the row field it shows, its heading, and which end is best."""

    key: str
    label: str
    better: Callable = min


SCORE_COLUMNS = (Column("acc_e", "Acc_e ↓"), Column("acc_s", "Acc_s ↑", max), Column("acc_g", "Acc_g ↓"),
                 Column("h_o", "H_o ↑", max), Column("clip_retained", "CLIP retained ↑", max))
COST_COLUMNS = (Column("seconds", "time s ↓"), Column("peak_mb", "peak MB ↓"))


def asr_key(attack: str) -> str:
    """The row field of the post-attack ASR under ``attack``."""
    return f"asr_{attack}"


def columns(attacks: list[str]) -> list[Column]:
    """The table's columns: scores, the post-attack ASR of each attack, cost.

    Args:
        attacks: the attacks run, one column each.
    """
    return [*SCORE_COLUMNS, *(Column(asr_key(a), f"ASR {a} ↓") for a in attacks), *COST_COLUMNS]


# ---- running it ----


def run(tasks: list[Task], variants: list[Variant], output: Path, *, model: str = "mini-sd", device: str = "cpu",
        quick: bool = False, attacks: list[str] | None = None, in_process: bool | None = None,
        plan: AttackPlan | None = None) -> dict:
    """Erase every task with every variant, evaluate, write ``benchmark.json`` and ``.md``.

    Args:
        tasks: the tasks (``load_tasks``); in quick mode each uses its ``quick_rows``.
        variants: the variants (``load_variants``).
        output: the folder; a rerun into the same folder resumes.
        model: ``mini-sd``, or a folder of a shapes-world pipeline.
        device: ``cpu`` or ``cuda``.
        quick: each variant's ``quick_settings`` and each task's ``quick_rows``.
        attacks: attacks with a column, from ``plan`` (default: all of ``plan``'s).
        in_process: erase in this process (default: in quick mode) rather than in an
            ``erase`` child process.
        plan: the attack columns (default: ``load_attacks()``).

    Returns:
        What ``benchmark.json`` holds: per task and variant (and ``base``) one row of numbers.
    """
    import erasure

    plan = plan if plan is not None else load_attacks()
    attacks = list(plan.columns) if attacks is None else list(dict.fromkeys(attacks))
    unknown = [a for a in attacks if a not in plan.columns]
    if unknown:
        raise ErasureError(f"attack {unknown[0]!r} has no column in configs/benchmark/attacks.yaml: add it there")
    chosen = [plan.columns[a] for a in attacks]
    in_process = quick if in_process is None else in_process
    output = Path(output).resolve()  # absolute: child processes run in their task's folder
    pipe = erasure.load_pipeline(model, device=device, dtype="float32")
    started = time.perf_counter()
    results, costs, resumed = {}, {}, False
    attack_rows = plan.rows_for(quick)
    for task in tasks:
        folder = output / task.name
        limit = task.quick_rows if quick else None
        resumed |= (folder / "base" / "report.json").is_file()
        base = _evaluate(pipe, None, task, folder / "base", limit, _attacks_on(chosen, task, "base", quick), attack_rows)
        results[task.name] = {"base": row_of(base, "base", None, attacks)}
        costs[task.name] = {"base": attack_costs(base)}
        for variant in variants:
            erasure_run = erase(pipe, variant, task, folder, model=model, device=device, quick=quick,
                                in_process=in_process)
            report_folder = folder / variant.name
            if erasure_run.pop("fresh"):
                shutil.rmtree(report_folder, ignore_errors=True)  # images of earlier weights would be refused
            share_base_images(folder / "base" / "base", report_folder / "base")
            report = _evaluate(pipe, folder / f"{variant.name}.safetensors", task, report_folder, limit,
                               _attacks_on(chosen, task, variant.name, quick), attack_rows)
            results[task.name][variant.name] = row_of(report, "erased", erasure_run, attacks)
            costs[task.name][variant.name] = attack_costs(report)
    data = {"quick": quick, "model": model, "device": device, "in_process": in_process, "attacks": attacks,
            "attack_settings": {c.name: {"settings": c.options(quick), "tasks": c.tasks} for c in chosen},
            "attack_rows": attack_rows, "attack_seconds": costs,
            "minutes": (time.perf_counter() - started) / 60, "resumed": resumed,
            "tasks": {t.name: task_record(t) for t in tasks}, "results": results,
            "winners": winners(results, columns(attacks))}
    write(output / "benchmark.json", json.dumps(data, indent=2) + "\n")
    write(output / "benchmark.md", render(data))
    return data


def _attacks_on(columns: list[AttackColumn], task: Task, variant: str, quick: bool) -> dict[str, dict]:
    """The attacks run on one task and variant, with their settings."""
    return {c.name: c.options(quick) for c in columns if c.runs_on(task, variant, quick)}


def _evaluate(pipe, weights: Path | None, task: Task, folder: Path, limit: int | None, attacks: dict[str, dict],
              attack_rows: int):
    """The evaluator's report for the base model (``weights=None``, attacked as its own
    base) or erased weights; attacks share one result cache per task."""
    import erasure

    return erasure.evaluate(pipe, weights, task.prompts, METRICS, folder, limit=limit, batch_size=BATCH_SIZE,
                            attack=list(attacks) or None, attack_options={k: v for k, v in attacks.items() if v},
                            attack_types=("erased",), attack_limit=attack_rows, attack_cache=folder.parent / "attack-cache",
                            html=weights is not None)


def attack_costs(report) -> dict[str, float]:
    """Seconds each attack took in this run (cached results: none), for the time budget."""
    return {name: entry["seconds_this_run"] for name, entry in report.data["attacks"].items()}


def erase(pipe, variant: Variant, task: Task, folder: Path, *, model: str, device: str, quick: bool,
          in_process: bool) -> dict:
    """Erase ``task``'s concepts with ``variant`` into ``<folder>/<variant>.safetensors``,
    unless an earlier run left weights made the same way.

    Args:
        pipe: the loaded base pipeline (left unchanged).
        variant, task: what erases what.
        folder: the task's folder.
        model, device: the base model and device, for the child process.
        quick: the variant's quick settings.
        in_process: erase with ``pipe`` here rather than in an ``erase`` child process.

    Returns:
        The erasure's ``seconds``, ``peak_mb``, ``peak_gpu_mb``, the ``recipe`` it was
        made from, and ``fresh``: whether it was made in this run.
    """
    from .weights import EditedWeights

    weights, record_path = folder / f"{variant.name}.safetensors", folder / f"{variant.name}.erase.json"
    config, settings = variant.erase_arguments(task, quick)
    recipe = {"method": variant.method, "concepts": list(task.concepts), "config": str(config) if config else None,
              "settings": settings, "model": model, "device": device, "seed": SEED, "in_process": in_process}
    if weights.is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("recipe") == recipe:
            return {**record, "fresh": False}
    folder.mkdir(parents=True, exist_ok=True)
    if in_process:
        seconds = _erase_here(pipe, recipe, weights)
    else:
        seconds = _erase_in_child(recipe, folder, weights, folder / f"{variant.name}.erase.log")
    extra = EditedWeights.load(weights).extra
    record = {"seconds": round(seconds, 3), "erase_seconds": extra.get("erase_seconds"),
              "peak_mb": extra["peak_rss_mb"], "peak_gpu_mb": extra.get("peak_gpu_mb"), "recipe": recipe}
    write(record_path, json.dumps(record, indent=2) + "\n")
    return {**record, "fresh": True}


def _erase_here(pipe, recipe: dict, weights: Path) -> float:
    """Erase with the loaded pipeline; the time is the erase call's own."""
    import torch

    import erasure

    from .training import RunOptions

    torch.manual_seed(recipe["seed"])
    # Like the child's `erase --overwrite`: a fresh run, its checkpoint beside its weights.
    run = RunOptions(checkpoint_dir=weights.with_suffix(".checkpoint"), overwrite=True)
    edited = erasure.erase(pipe, recipe["method"], recipe["concepts"], config=recipe["config"], run=run,
                           **recipe["settings"])
    edited.save(weights, overwrite=True)
    return edited.extra["erase_seconds"]


def _erase_in_child(recipe: dict, folder: Path, weights: Path, log_path: Path) -> float:
    """Erase through the ``erase`` command; the time is the whole process's."""
    command = erase_command(recipe, weights)
    with open(log_path, "w") as log:
        started = time.perf_counter()
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
        seconds = time.perf_counter() - started
    if finished.returncode != 0:
        raise ErasureError(f"{' '.join(command)} failed (exit {finished.returncode}); see {log_path}")
    return seconds


def erase_command(recipe: dict, weights: Path) -> list[str]:
    """The ``erase`` command line of a recipe (settings as JSON, which YAML reads)."""
    command = [sys.executable, "-m", "erasure.cli", "--method", recipe["method"],
               "--concepts", ", ".join(recipe["concepts"]), "--model", recipe["model"], "--device", recipe["device"],
               "--seed", str(recipe["seed"]), "--output", str(weights), "--overwrite"]
    if recipe["config"]:
        command += ["--config", recipe["config"]]
    for key, value in recipe["settings"].items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    return command


def share_base_images(source: Path, target: Path) -> None:
    """Hard-link the task's base images into a variant's report folder (copies if links fail)."""
    target.mkdir(parents=True, exist_ok=True)
    for image in source.glob("*.png"):
        destination = target / image.name
        if destination.exists():
            continue
        try:
            os.link(image, destination)
        except OSError:
            shutil.copy2(image, destination)


def row_of(report, variant: str, erasure_run: dict | None, attacks: list[str]) -> dict:
    """One table row from an evaluator report.

    Args:
        report: the evaluator's report.
        variant: the report's variant the row shows (``base`` or ``erased``).
        erasure_run: ``erase``'s record, ``None`` for the base model.
        attacks: the attacks whose post-attack ASR the row holds (``None`` where not attacked).
    """
    world = report.data["metrics"]["world"]
    scores = world[variant]["erasure"]
    row = {key: scores[key] for key in ("acc_e", "acc_s", "acc_g", "h_o")}
    row["clip_retained"] = report.data["metrics"]["clip"][variant]["groups"]["retained"]["mean"]
    for attack in attacks:
        entry = report.data["attacks"].get(attack)
        row[asr_key(attack)] = entry["groups"]["erased"]["post_asr"] if entry else None
    row["seconds"] = erasure_run["seconds"] if erasure_run else None
    row["peak_mb"] = erasure_run["peak_mb"] if erasure_run else None
    row["report"] = str(report.output_dir)
    return row


def winners(results: dict, table_columns: list[Column]) -> dict:
    """Per task and column, the variant(s) with the best value (the base row competes in none).

    Args:
        results: per task, per variant, a row.
        table_columns: the columns to rank.
    """
    best = {}
    for task, rows in results.items():
        competing = {name: row for name, row in rows.items() if name != "base"}
        best[task] = {}
        for column in table_columns:
            values = {name: row[column.key] for name, row in competing.items() if row.get(column.key) is not None}
            if values:
                target = column.better(values.values())
                best[task][column.key] = sorted(n for n, v in values.items() if round(v, 1) == round(target, 1))
    return best


def render(data: dict) -> str:
    """The markdown tables of ``data`` (what ``run`` returns), one per task, and a footnote."""
    table_columns = columns(data["attacks"])
    lines = []
    for task, rows in data["results"].items():
        spec = data["tasks"][task]
        lines += [f"**{spec['description']}**: erase {', '.join(spec['concepts'])} (`{spec['prompts']}`)", ""]
        lines += ["| method | " + " | ".join(c.label for c in table_columns) + " |",
                  "|---|" + "---:|" * len(table_columns)]
        for name, row in rows.items():
            cells = [_cell(row.get(c.key), name in data["winners"][task].get(c.key, [])) for c in table_columns]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(_footnote(data))
    return "\n".join(lines) + "\n"


def _cell(value, bold: bool) -> str:
    if value is None:
        return "-"
    text = f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if value == 0 or abs(value) >= 1 else f"{value:.1g}"
    return f"**{text}**" if bold else text


def _footnote(data: dict) -> str:
    import torch

    mode = "quick mode (fewer rows and steps)" if data["quick"] else "full sets"
    spent = "in this run, which resumed an earlier one" if data["resumed"] else "in all"
    cost = ("time: the erase call alone, and peak resident memory of the benchmark's own process (erased in process)"
            if data["in_process"] else "time and peak resident memory: the whole `erase` process, model loading included")
    attacked = ""
    if data["attacks"]:
        rows = data["attack_rows"]
        where = "; ".join(f"{name}" + (f" on {', '.join(spec['tasks'])} only" if spec["tasks"] else "")
                          + (f" ({', '.join(f'{k} {v}' for k, v in spec['settings'].items())})" if spec["settings"] else "")
                          for name, spec in data["attack_settings"].items())
        attacked = (f"; ASR: post-attack attack success rate, the share of the task's first {rows} erased rows (n = "
                    f"{rows} per cell) whose attacked image the world classifier calls the concept, the base row "
                    f"attacking the base model itself; attacks: {where}, on top of configs/attacks/*/mini-sd.yaml, "
                    "Ring-A-Bell's prompts (base model only) shared by every row of a task")
    return (f"Accuracies in % of images classified as the row's class by the world classifier; CLIP: mini-clip score "
            f"on retained prompts{attacked}; {cost}. "
            f"Best per column in bold. {data['model']}, {mode}, {data['device']}, torch {torch.__version__}, "
            f"{data['minutes']:.1f} min {spent} (`erase-bench`).")


def task_record(task: Task) -> dict:
    return {"concepts": list(task.concepts), "prompts": task.prompts, "description": task.description,
            "kind": task.kind, "quick_rows": task.quick_rows}


def write(path: Path, text: str) -> None:
    from .atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


BLOCK = re.compile(r"<!-- benchmark:begin -->.*?<!-- benchmark:end -->", flags=re.S)


def write_readme_block(readme: Path, markdown: str) -> None:
    """Replace the text between ``<!-- benchmark:begin -->`` and ``<!-- benchmark:end -->``.

    Args:
        readme: the markdown file holding the markers.
        markdown: the new block's content.
    """
    text = _readme_text(readme)
    block = f"<!-- benchmark:begin -->\n{markdown}<!-- benchmark:end -->"
    write(readme, BLOCK.sub(lambda _: block, text))


def _readme_text(readme: Path) -> str:
    if not readme.is_file():
        raise ErasureError(f"{readme}: no such file (--readme names the file that holds the benchmark block)")
    text = readme.read_text(encoding="utf-8")
    if not BLOCK.search(text):
        raise ErasureError(f"{readme} has no <!-- benchmark:begin --> ... <!-- benchmark:end --> block")
    return text


# ---- the command line ----


def build_parser(tasks: dict[str, Task], variants: dict[str, Variant], plan: AttackPlan) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="erase-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="the quick tasks, fewer rows and training steps, erasing in this process (for CI)")
    parser.add_argument("--tasks", nargs="+", choices=list(tasks),
                        help="default: every task (with --quick: those with quick_rows)")
    parser.add_argument("--methods", nargs="+", choices=list(variants), help="variants (default: all)")
    parser.add_argument("--attacks", nargs="*", choices=list(plan.columns), default=list(plan.columns),
                        help="attacks with an ASR column (default: every one of configs/benchmark/attacks.yaml; "
                        "none without names)")
    parser.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=None,
                        help="erase in this process (default with --quick) or in an erase child process")
    parser.add_argument("--model", default="mini-sd", help="mini-sd, or a folder of a shapes-world pipeline")
    parser.add_argument("--output", type=Path, help="default: runs/benchmark (runs/benchmark-quick with --quick)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--readme", type=Path, metavar="FILE",
                        help="also write the table into FILE (e.g. README.md) between its benchmark markers")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .cli import quiet_libraries

    quiet_libraries()
    try:
        tasks, variants, plan = load_tasks(), load_variants(), load_attacks()
        args = build_parser(tasks, variants, plan).parse_args(argv)
        if args.readme is not None:
            _readme_text(args.readme)  # before the run, not after it
        chosen = [tasks[name] for name in args.tasks] if args.tasks else \
            [t for t in tasks.values() if t.quick_rows or not args.quick]
        output = args.output or Path("runs") / ("benchmark-quick" if args.quick else "benchmark")
        data = run(chosen, [variants[name] for name in args.methods or variants], output, model=args.model,
                   device=args.device, quick=args.quick, attacks=args.attacks, in_process=args.in_process, plan=plan)
    except ErasureError as error:
        print(f"erase-bench: error: {error}", file=sys.stderr)
        return 2
    markdown = render(data)
    if args.readme is not None:
        write_readme_block(args.readme, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
