"""The mini-sd benchmark: every method variant on the same erasure tasks, the same seeds, one table per task.

    erase-bench --suite shapes --jobs 2  # one suite of configs/benchmark/suites.yaml, two cells at a time (2 CPU cores)
    erase-bench --suite attacks --attacks closed-form  # a subset of the suite's attack columns
    erase-bench --quick                # the CI version (tests/test_benchmark.py)
    erase-bench --suite mass --readme README.md   # also write the suite's tables between its README markers

Variants are the YAML files of ``configs/benchmark/methods/``, one per row of the table
(the file name is the row's name): which registered method, its config file and
settings, its settings in quick mode and the floors the quick mode must reach, and
settings per kind of concept (MACE's colour, style and pair templates). A method joins
the benchmark by a new file there. Tasks are ``configs/benchmark/tasks.yaml``: prompt
sets of ``eval_prompts/``, each with erased rows and the rows that must survive (other
classes and synonyms; for the ``pairs/`` sets, neighbouring and far pairs). Suites are
``configs/benchmark/suites.yaml``: which tasks, variants and attacks run together, each
sized to run in half an hour on this project's 2-core CPU with ``--jobs 2``: the cells (a
task's base model, or one variant erasing and evaluated on it) are independent once the
task's base cell has run, so that many worker processes take them in turn, the CPU's
threads shared among them (small models gain more from processes than from threads).

Each variant erases each task's concepts, through the ``erase`` command in a child
process (so that the wall time and peak memory are the erasure's own, loading
included; the child records its peak resident memory in the weights' ``extra``, and
the GPU's peak allocation when there is one), or, in quick mode, in this process with
the already loaded pipeline (time: the erase call alone; memory: this process's peak
so far). Every accuracy comes from the evaluator (``erasure.evaluate``) on images
generated with each row's own seed, with its 95% interval: the world classifier's
Acc_e on held-out phrasings (no method trains on them; seen phrasings in their own
column), Acc_s, Acc_g and H_o (MACE's protocol), mini-clip's CLIP score on the
retained rows; for pairs, Acc_e, Acc_neighbour, Acc_far and H_pairs; and each attack's
post-attack ASR (``erasure.eval.attack``): the share of the task's first erased rows
whose attacked image the world classifier calls the concept. Which attacks run where,
with which settings and on how many rows, is ``configs/benchmark/attacks.yaml``; a suite
names the attack columns it shows, and the base model is attacked as its own base.
Bold marks a lead only when its interval is clear of the runner-up's; otherwise the
table says tie. The base model's images are made once per task and shared by every
variant (hard links; the evaluator verifies each image's record before reusing it),
attack results are cached per task (Ring-A-Bell's, which depend on the base model only,
are searched once per task for every variant), and an erasure is reused when its record
matches, so a rerun into the same folder resumes where it stopped, and suites that share
a task share its work.

Writes ``<output>/benchmark[-<suite>].json`` and ``.md``; per task and variant the
weights, the erase record (and log) and the evaluator's report folder.
"""

from __future__ import annotations

import argparse
import hashlib
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
from .eval.generate import share_images
from .eval.intervals import overlap, wilson
from .eval.tables import bound

METRICS = ["world", "clip"]
SEED = 0  # torch's global seed in the erase command (its default), for in-process erasures too
BATCH_SIZE = 64
# Quick mode samples its images in 15 DDIM steps, not the model's 25: generation is most
# of quick mode's time, and the floors compare each variant with the base sampled alike.
QUICK_SAMPLING_STEPS = 15
VARIANT_KEYS = {"method", "config", "settings", "per_kind", "quick"}
QUICK_KEYS = {"settings", "floors"}
FLOOR_KEYS = {"erased_drop", "retained_share", "kept_share"}
PER_KIND_KEYS = {"config", "settings"}
TASK_KEYS = {"concepts", "prompts", "description", "kind", "quick_rows"}
SUITE_KEYS = {"description", "tasks", "methods", "attacks"}
PAIR = "pair"  # the kind of the pairs/ tasks, tabulated together as mass erasure
ATTACK_FILE_KEYS = {"rows", "quick_rows", "attacks"}
ATTACK_KEYS = {"settings", "tasks", "quick", "quick_settings", "restarts"}


@dataclass(frozen=True)
class Task:
    """An erasure task: what is erased and the prompt set that measures it.

    Attributes:
        name: the task's key in ``tasks.yaml``.
        concepts: the concepts erased together.
        prompts: a bundled prompt set with erased, retained and synonym rows.
        description: the table's heading.
        kind: ``shape``, ``colour``, ``style`` or ``pair`` (a shape-colour pair); selects a
            variant's ``per_kind`` settings, and pair tasks form the mass-erasure table.
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
            the quick tasks, in points), ``retained_share`` (Acc_s per task as a share
            of the base model's) and ``kept_share`` (pair tasks: the mean of Acc_neighbour
            and Acc_far as a share of the base model's).
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
        restarts: runs with consecutive seeds (``erase-eval --attack-restarts``); above 1
            the table adds the share of rows any run breaks.
    """

    name: str
    settings: dict = field(default_factory=dict)
    tasks: tuple[str, ...] | None = None
    quick: tuple[str, ...] | None = ()
    quick_settings: dict = field(default_factory=dict)
    restarts: int = 1

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
        quick, restarts = column.get("quick"), column.get("restarts", 1)
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise ErasureError(f"{path}: attack {name!r}: restarts {restarts!r} must be a whole number of at least 1")
        columns[name] = AttackColumn(name, column.get("settings", {}), _tuple(column.get("tasks")),
                                     None if quick == "all" else tuple(quick or ()), column.get("quick_settings", {}),
                                     restarts)
    return AttackPlan(columns, int(spec["rows"]), int(spec["quick_rows"]))


def _tuple(values) -> tuple | None:
    return None if values is None else tuple(values)


@dataclass(frozen=True)
class Suite:
    """Tasks, variants and attacks run together (``erase-bench --suite NAME``).

    Attributes:
        name: the suite's key in ``suites.yaml``.
        tasks: task names, in table order.
        methods: variant names; empty: every variant.
        attacks: attacks with an ASR column (``attacks.yaml``); empty: none.
        description: what it measures, for ``--help``.
    """

    name: str
    tasks: tuple[str, ...]
    methods: tuple[str, ...] = ()
    attacks: tuple[str, ...] = ()
    description: str = ""


def load_suites(tasks: dict[str, Task], variants: dict[str, Variant], attack_plan: AttackPlan,
                path: Path | None = None) -> dict[str, Suite]:
    """The suites of ``configs/benchmark/suites.yaml`` (or ``path``), checked against the tasks, variants
    and attack columns.

    Args:
        tasks: the tasks the suites may name.
        variants: the variants they may name.
        attack_plan: the attack columns they may name (``load_attacks``).
        path: another suites file.
    """
    path = Path(path) if path is not None else benchmark_dir() / "suites.yaml"
    suites = {}
    for name, spec in read_yaml(path).items():
        where = f"{path}: suite {name!r}"
        _check_keys(spec, SUITE_KEYS, where, required={"tasks"})
        for key, known in (("tasks", tasks), ("methods", variants), ("attacks", attack_plan.columns)):
            unknown = [item for item in spec.get(key, []) if item not in known]
            if unknown:
                raise ErasureError(f"{where}: unknown {key[:-1]} {unknown[0]!r}; known: {', '.join(known)}")
        suites[name] = Suite(name, tuple(spec["tasks"]), tuple(spec.get("methods", [])), tuple(spec.get("attacks", [])),
                             spec.get("description", ""))
    return suites


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
    """A column of the table: the row field it shows, its heading, which end is best,
    and whether it carries a 95% interval (a row's ``<key>_ci``)."""

    key: str
    label: str
    better: Callable = min
    interval: bool = True


# Acc_e and H_o on the held-out phrasings: no method trains on those prompts.
SCORE_COLUMNS = (Column("acc_e", "Acc_e held-out ↓"), Column("acc_e_seen", "Acc_e seen ↓"),
                 Column("acc_s", "Acc_s ↑", max), Column("acc_g", "Acc_g ↓"), Column("h_o", "H_o ↑", max),
                 Column("clip_retained", "CLIP retained ↑", max))
MASS_COLUMNS = (Column("acc_e", "Acc_e ↓"), Column("acc_neighbour", "Acc_neighbour ↑", max),
                Column("acc_far", "Acc_far ↑", max), Column("h_pairs", "H_pairs ↑", max))
COST_COLUMNS = (Column("seconds", "time s ↓", interval=False), Column("peak_mb", "peak MB ↓", interval=False))
# The row fields read from the world metric's erasure scores, per kind of table: row key -> score keys, the
# first present wins (a set without phrasings has no held-out Acc_e: its Acc_e is every erased row's).
SCORE_SOURCES = {"acc_e": ("acc_e_held_out", "acc_e"), "acc_e_seen": ("acc_e_seen",), "acc_s": ("acc_s",),
                 "acc_g": ("acc_g",), "h_o": ("h_o_held_out", "h_o")}
MASS_SOURCES = {"acc_e": ("acc_e",), "acc_neighbour": ("acc_neighbour",), "acc_far": ("acc_far",),
                "h_pairs": ("h_pairs",)}


def asr_key(attack: str) -> str:
    """The row field of the post-attack ASR under ``attack``."""
    return f"asr_{attack}"


def restarts_of(data: dict) -> dict[str, int]:
    """Runs per attack column, as ``data["attack_settings"]`` records them (earlier files: 1)."""
    return {name: spec.get("restarts", 1) for name, spec in data.get("attack_settings", {}).items()}


def any_run_key(attack: str) -> str:
    """The row field of the share of rows any of the attack's restarts breaks."""
    return f"asr_{attack}_any_run"


def columns(attacks: list[str], kind: str = "", restarts: dict[str, int] | None = None) -> list[Column]:
    """A table's columns: scores (mass erasure's for pair tasks), the post-attack ASR of each
    attack (and, for an attack run more than once, the share of rows any run breaks), cost.

    Args:
        attacks: the attacks run, one column each.
        kind: the task's kind (``pair``: the mass-erasure columns).
        restarts: runs per attack (absent: 1).
    """
    attacked = []
    for attack in attacks:
        attacked.append(Column(asr_key(attack), f"ASR {attack} ↓"))
        runs = (restarts or {}).get(attack, 1)
        if runs > 1:
            attacked.append(Column(any_run_key(attack), f"ASR {attack}, any of {runs} ↓"))
    if kind == PAIR:
        return [*MASS_COLUMNS, *attacked, COST_COLUMNS[0]]
    return [*SCORE_COLUMNS, *attacked, *COST_COLUMNS]


# ---- running it ----


def run(tasks: list[Task], variants: list[Variant], output: Path, *, model: str = "mini-sd", device: str = "cpu",
        quick: bool = False, attacks: list[str] | None = None, in_process: bool | None = None,
        suite: str | None = None, plan: AttackPlan | None = None, jobs: int = 1) -> dict:
    """Erase every task with every variant, evaluate, write ``benchmark[-<suite>].json`` and ``.md``.

    Args:
        tasks: the tasks (``load_tasks``); in quick mode each uses its ``quick_rows``.
        variants: the variants (``load_variants``).
        output: the folder; a rerun into the same folder resumes, and suites sharing it
            share their tasks' erasures and images.
        model: ``mini-sd``, or a folder of a shapes-world pipeline.
        device: ``cpu`` or ``cuda``.
        quick: each variant's ``quick_settings`` and each task's ``quick_rows``.
        attacks: attacks with a column, from ``plan`` (default: all of ``plan``'s).
        in_process: erase in this process (default: in quick mode) rather than in an
            ``erase`` child process.
        suite: the suite's name, for the files' names and the record.
        plan: the attack columns (default: ``load_attacks()``).
        jobs: cells (a task's base model, or one variant on it) run at once, each in a
            worker process with its own pipeline and an equal share of this process's
            torch threads; 1: one after another in this process.

    Returns:
        What ``benchmark.json`` holds: per task and variant (and ``base``) one row of
        numbers with their intervals; per task its image counts and minutes of work.
    """
    plan = plan if plan is not None else load_attacks()
    attacks = list(plan.columns) if attacks is None else list(dict.fromkeys(attacks))
    unknown = [a for a in attacks if a not in plan.columns]
    if unknown:
        raise ErasureError(f"attack {unknown[0]!r} has no column in configs/benchmark/attacks.yaml: add it there")
    if jobs < 1:
        raise ErasureError(f"--jobs must be at least 1, not {jobs}")
    settings = RunSettings(output=Path(output).resolve(),  # absolute: child processes run in their task's folder
                           model=model, device=device, quick=quick,
                           in_process=quick if in_process is None else in_process,
                           columns=tuple(plan.columns[a] for a in attacks), attack_rows=plan.rows_for(quick))
    started, cpu_before = time.perf_counter(), cpu_seconds()
    cells = run_cells(settings, tasks, variants, jobs)
    results, records, costs = {}, {}, {}
    for task in tasks:
        task_cells = {"base": cells[task.name, "base"], **{v.name: cells[task.name, v.name] for v in variants}}
        results[task.name] = {name: cell["row"] for name, cell in task_cells.items()}
        costs[task.name] = {name: cell["costs"] for name, cell in task_cells.items()}
        records[task.name] = {**task_record(task), "images": task_cells["base"]["images"],
                              "minutes": sum(cell["seconds"] for cell in task_cells.values()) / 60}
    data = {"suite": suite, "quick": quick, "model": model, "device": device, "in_process": settings.in_process,
            "attacks": attacks, "attack_rows": settings.attack_rows, "attack_seconds": costs,
            "attack_settings": {c.name: {"settings": c.options(quick), "tasks": c.tasks, "restarts": c.restarts}
                                for c in settings.columns},
            "minutes": (time.perf_counter() - started) / 60, "cpu_minutes": (cpu_seconds() - cpu_before) / 60,
            "jobs": jobs, "resumed": any(cells[t.name, "base"]["resumed"] for t in tasks),
            "load_average": os.getloadavg()[0], "tasks": records, "results": results}
    data["winners"] = {t.name: winners(results[t.name], columns(attacks, t.kind, restarts_of(data))) for t in tasks}
    stem = f"benchmark-{suite}" if suite else "benchmark"
    write(settings.output / f"{stem}.json", json.dumps(data, indent=2) + "\n")
    write(settings.output / f"{stem}.md", render(data))
    return data


@dataclass(frozen=True)
class RunSettings:
    """What every cell of one run shares (picklable: worker processes receive it)."""

    output: Path
    model: str
    device: str
    quick: bool
    in_process: bool
    columns: tuple[AttackColumn, ...]
    attack_rows: int


def run_cells(settings: RunSettings, tasks: list[Task], variants: list[Variant], jobs: int) -> dict:
    """Every cell's result (``run_cell``), by ``(task, variant or "base")``.

    A task's base cell runs before its variants: they reuse its images and its cached
    attack results (Ring-A-Bell's search is the base model's). With ``jobs`` > 1 the cells
    run in that many worker processes, a bar counting the finished ones.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    from tqdm.auto import tqdm

    runner = CellsHere(settings) if jobs == 1 else CellWorkers(settings, jobs)
    done = {}
    with runner, tqdm(total=len(tasks) * (len(variants) + 1), desc="benchmark cells", disable=jobs == 1) as bar:
        pending = {runner.submit(task, None): (task, None) for task in tasks}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                task, variant = pending.pop(future)
                done[task.name, variant.name if variant else "base"] = future.result()
                bar.update()
                if variant is None:
                    pending.update({runner.submit(task, v): (task, v) for v in variants})
    return done


class CellsHere:
    """Runs cells one after another in this process, on one loaded pipeline."""

    def __init__(self, settings: RunSettings):
        import erasure

        self.settings = settings
        self.pipe = erasure.load_pipeline(settings.model, device=settings.device, dtype="float32")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def submit(self, task: Task, variant: Variant | None):
        from concurrent.futures import Future

        future = Future()
        future.set_result(run_cell(self.pipe, self.settings, task, variant))
        return future


class CellWorkers:
    """Runs cells in ``jobs`` worker processes (spawned: a forked torch may hang), each
    with its own pipeline and an equal share of this process's torch threads."""

    def __init__(self, settings: RunSettings, jobs: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        import torch

        threads = max(1, torch.get_num_threads() // jobs)
        self.pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start_worker, initargs=(settings, threads))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, task: Task, variant: Variant | None):
        return self.pool.submit(_run_in_worker, task, variant)


_WORKER: dict = {}  # a worker process's settings and pipeline (CellWorkers)


def _start_worker(settings: RunSettings, threads: int) -> None:
    import torch

    import erasure

    from .cli import quiet_libraries

    # Its progress bars and warnings go to a log of its own (two processes' bars would
    # interleave on one terminal; run_cells counts the cells), errors to the main process.
    logs = settings.output / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    os.dup2(os.open(logs / f"worker-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # for its erase child processes
    torch.set_num_threads(threads)
    quiet_libraries()
    _WORKER.update(settings=settings,
                   pipe=erasure.load_pipeline(settings.model, device=settings.device, dtype="float32"))


def _run_in_worker(task: Task, variant: Variant | None) -> dict:
    return run_cell(_WORKER["pipe"], _WORKER["settings"], task, variant)


def run_cell(pipe, settings: RunSettings, task: Task, variant: Variant | None) -> dict:
    """One row of a task's table: the base model's images and attacks (``variant=None``),
    or the variant's erasure (reused when made the same way) and its evaluation.

    Returns:
        ``row`` (``row_of``'s, with ``eval_seconds``), ``costs`` (``attack_costs``),
        ``seconds`` (the cell's wall time), and for the base cell ``images`` (its counts)
        and ``resumed`` (whether an earlier run had made its report).
    """
    started, folder = time.perf_counter(), settings.output / task.name
    names = [column.name for column in settings.columns]
    attacks = _attacks_on(list(settings.columns), task, variant.name if variant else "base", settings.quick)
    restarts = {c.name: c.restarts for c in settings.columns if c.name in attacks}
    if variant is None:
        resumed = (folder / "base" / "report.json").is_file()
        report, seconds = _timed(_evaluate, pipe, None, task, folder / "base", settings, attacks, restarts)
        extra, row = {"images": image_counts(report), "resumed": resumed}, row_of(report, "base", None, names, task.kind)
    else:
        erasure_run = erase(pipe, variant, task, folder, model=settings.model, device=settings.device,
                            quick=settings.quick, in_process=settings.in_process)
        report_folder = folder / variant.name
        if erasure_run.pop("fresh"):
            shutil.rmtree(report_folder, ignore_errors=True)  # images of earlier weights would be refused
        share_images(folder / "base" / "base", report_folder / "base")
        report, seconds = _timed(_evaluate, pipe, folder / f"{variant.name}.safetensors", task, report_folder,
                                 settings, attacks, restarts)
        extra, row = {}, row_of(report, "erased", erasure_run, names, task.kind)
    return {"row": {**row, "eval_seconds": seconds}, "costs": attack_costs(report),
            "seconds": time.perf_counter() - started, **extra}


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (erase processes, workers)."""
    import resource

    mine, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime + children.ru_utime + children.ru_stime


def _timed(function, *args):
    """``function(*args)`` and the seconds it took."""
    started = time.perf_counter()
    result = function(*args)
    return result, round(time.perf_counter() - started, 1)


def image_counts(report) -> dict[str, int]:
    """Images per group of a task's report (erased split by phrasing when the set says)."""
    counts = {}
    for group, stats in report.data["metrics"]["world"]["base"]["groups"].items():
        if group == "all":
            continue
        for phrasing, split in stats.get("phrasings", {}).items():
            counts[f"{group} {phrasing}"] = split["n"]
        if not stats.get("phrasings"):
            counts[group] = stats["n"]
    return counts


def _attacks_on(columns: list[AttackColumn], task: Task, variant: str, quick: bool) -> dict[str, dict]:
    """The attacks run on one task and variant, with their settings."""
    return {c.name: c.options(quick) for c in columns if c.runs_on(task, variant, quick)}


def _evaluate(pipe, weights: Path | None, task: Task, folder: Path, settings: RunSettings, attacks: dict[str, dict],
              restarts: dict[str, int]):
    """The evaluator's report for the base model (``weights=None``, attacked as its own
    base) or erased weights, on the task's quick rows and steps in quick mode; attacks
    share one result cache per task."""
    import erasure

    quick = settings.quick
    return erasure.evaluate(pipe, weights, task.prompts, METRICS, folder, limit=task.quick_rows if quick else None,
                            num_inference_steps=QUICK_SAMPLING_STEPS if quick else None, batch_size=BATCH_SIZE,
                            attack=list(attacks) or None, attack_options={k: v for k, v in attacks.items() if v},
                            attack_restarts=restarts, attack_types=("erased",), attack_limit=settings.attack_rows,
                            attack_cache=folder.parent / "attack-cache", html=weights is not None)


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
    # The config file's contents, not only its path: an edited config makes new weights.
    config_sha256 = hashlib.sha256(config.read_bytes()).hexdigest() if config else None
    recipe = {"method": variant.method, "concepts": list(task.concepts), "config": str(config) if config else None,
              "config_sha256": config_sha256, "settings": settings, "model": model, "device": device, "seed": SEED,
              "in_process": in_process}
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
               "--output", str(weights), "--overwrite"]  # no --seed: it would replace the configs' own seeds
    if recipe["config"]:
        command += ["--config", recipe["config"]]
    for key, value in recipe["settings"].items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    return command


def row_of(report, variant: str, erasure_run: dict | None, attacks: list[str], kind: str = "") -> dict:
    """One table row from an evaluator report: each score and its 95% interval (``<key>_ci``).

    Args:
        report: the evaluator's report.
        variant: the report's variant the row shows (``base`` or ``erased``).
        erasure_run: ``erase``'s record, ``None`` for the base model.
        attacks: the attacks whose post-attack ASR the row holds (``None`` where not attacked).
        kind: the task's kind (``pair``: the mass-erasure scores).
    """
    world = report.data["metrics"]["world"]
    scores = world[variant]["erasure"]
    row = {}
    for key, sources in (MASS_SOURCES if kind == PAIR else SCORE_SOURCES).items():
        source = next((s for s in sources if scores.get(s) is not None), sources[0])
        row[key], row[f"{key}_ci"] = scores.get(source), scores.get(f"{source}_ci")
    if kind != PAIR:
        retained = report.data["metrics"]["clip"][variant]["groups"]["retained"]
        row["clip_retained"], row["clip_retained_ci"] = retained["mean"], retained["mean_ci"]
    for attack in attacks:
        entry = (report.data.get("attacks") or {}).get(attack) or {}
        erased = entry.get("groups", {}).get("erased", {})
        asr, n = erased.get("post_asr"), erased.get("n")
        row[asr_key(attack)] = asr
        row[f"{asr_key(attack)}_ci"] = wilson(round(asr * n / 100), n) if asr is not None else None
        if "restarts" in entry:
            any_run = entry["restarts"].get("groups", {}).get("erased", {})
            row[any_run_key(attack)], row[f"{any_run_key(attack)}_ci"] = any_run.get("any"), any_run.get("any_interval")
    row["method"] = erasure_run["recipe"]["method"] if erasure_run else None
    row["seconds"] = erasure_run["seconds"] if erasure_run else None
    row["peak_mb"] = erasure_run["peak_mb"] if erasure_run else None
    row["report"] = str(report.output_dir)
    return row


def winners(rows: dict, table_columns: list[Column]) -> dict:
    """Per column of one task's table: the best variant, and whether its lead is clear.

    A lead is clear when the best value's 95% interval does not overlap the
    runner-up's; then ``{"best": [name], "clear": True}``. Otherwise the column is a tie
    among every variant whose interval overlaps the best one's (``"clear": False``).
    Columns without intervals (costs, one run each) name the lowest value, clear.
    The base row competes in none.

    Args:
        rows: per variant (and ``base``), a row.
        table_columns: the columns to rank.
    """
    best = {}
    competing = {name: row for name, row in rows.items() if name != "base"}
    for column in table_columns:
        values = {name: row[column.key] for name, row in competing.items() if row.get(column.key) is not None}
        if not values:
            continue
        ranked = sorted(values, key=lambda n: (values[n] if column.better is min else -values[n], n))
        leader = ranked[0]
        if not column.interval:
            best[column.key] = {"best": [n for n in ranked if round(values[n], 1) == round(values[leader], 1)],
                                "clear": True}
            continue
        interval = competing[leader].get(f"{column.key}_ci")
        tied = [n for n in ranked if overlap(interval, competing[n].get(f"{column.key}_ci"))]
        best[column.key] = {"best": [leader], "clear": True} if tied == [leader] else {"best": tied, "clear": False}
    return best


def render(data: dict) -> str:
    """The markdown of ``data`` (what ``run`` returns): a table per task, one table for
    the pair tasks (mass erasure), the legend and a footnote."""
    lines = []
    for task, rows in data["results"].items():
        spec = data["tasks"][task]
        if spec["kind"] == PAIR:
            continue
        table_columns = columns(data["attacks"], spec["kind"], restarts_of(data))
        images = ", ".join(f"{n} {group}" for group, n in spec.get("images", {}).items())
        lines += [f"**{spec['description']}**: erase {', '.join(spec['concepts'])} (`{spec['prompts']}`; images per "
                  f"method: {images})", ""]
        lines += _table(rows, data["winners"][task], table_columns, lambda name: [name], ["method"])
        lines.append("")
    pair_tasks = [t for t, spec in data["tasks"].items() if spec["kind"] == PAIR]
    if pair_tasks:
        lines += render_mass(data, pair_tasks)
    lines.append(_legend())
    lines.append("")
    lines.append(_footnote(data))
    return "\n".join(lines) + "\n"


def _table(rows: dict, best: dict, table_columns: list[Column], first_cells, header: list[str]) -> list[str]:
    """Markdown rows of one task: a row per variant, then the lead row."""
    lines = ["| " + " | ".join(header + [c.label for c in table_columns]) + " |",
             "|" + "---|" * len(header) + "---:|" * len(table_columns)]
    for name, row in rows.items():
        cells = [_cell(row, c, best.get(c.key, {}), name) for c in table_columns]
        lines.append("| " + " | ".join(first_cells(name) + cells) + " |")
    lead = [_lead(best.get(c.key)) for c in table_columns]
    lines.append("| " + " | ".join(first_cells("lead") + lead) + " |")
    return lines


def _cell(row: dict, column: Column, best: dict, name: str) -> str:
    value = row.get(column.key)
    if value is None:
        return "-"
    text = _number(value)
    interval = row.get(f"{column.key}_ci") if column.interval else None
    if interval:
        between = " to " if interval[0] < 0 else "-"
        text += f" [{bound(interval[0])}{between}{bound(interval[1])}]"
    return f"**{text}**" if best.get("clear") and name in best["best"] else text


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if value == 0 or abs(value) >= 1 else f"{value:.1g}"


def _lead(best: dict | None) -> str:
    if not best:
        return "-"
    return f"**{', '.join(best['best'])}**" if best["clear"] else f"tie ({len(best['best'])})"


def _legend() -> str:
    return ("Each accuracy with its 95% interval in brackets: Wilson score for shares of images, percentile bootstrap "
            "over rows (2,000 resamples) for H_o, H_pairs and CLIP. Bold: the best value, only when its interval does "
            "not overlap the runner-up's; the lead row names it, or says tie (k): k methods' intervals overlap the "
            "best one's, so these images do not rank them. Costs are one run each, the lowest in bold.")


def render_mass(data: dict, tasks: list[str]) -> list[str]:
    """The mass-erasure table: per variant, N = the pairs erased at once, its scores and
    erase time (bold and tie within each N), then whether retention holds as N grows.

    Args:
        data: what ``run`` returns.
        tasks: the pair tasks, in order of N.
    """
    tasks = sorted(tasks, key=lambda t: len(data["tasks"][t]["concepts"]))
    table_columns = columns(data["attacks"], PAIR, restarts_of(data))
    names = list(dict.fromkeys(name for task in tasks for name in data["results"][task]))
    lines = [f"**mass erasure**: N shape-colour pairs erased at once (`{', '.join(data['tasks'][t]['prompts'] for t in tasks)}`); "
             "Acc_e: erased pairs; Acc_neighbour: pairs sharing a shape or a colour with an erased one; Acc_far: pairs "
             "sharing neither; H_pairs: harmonic mean of 100 - Acc_e, Acc_neighbour, Acc_far (as MACE's H_c). Images "
             "per method and N: " + "; ".join(f"N = {len(data['tasks'][t]['concepts'])}: "
                                              + ", ".join(f"{n} {g}" for g, n in data["tasks"][t].get("images", {}).items())
                                              for t in tasks), ""]
    lines += ["| method | N | " + " | ".join(c.label for c in table_columns) + " |", "|---|---:|" + "---:|" * len(table_columns)]
    for name in names:
        for task in tasks:
            row, best = data["results"][task].get(name), data["winners"][task]
            if row is not None:
                cells = [_cell(row, c, best.get(c.key, {}), name) for c in table_columns]
                lines.append(f"| {name} | {len(data['tasks'][task]['concepts'])} | " + " | ".join(cells) + " |")
    for task in tasks:
        lead = [_lead(data["winners"][task].get(c.key)) for c in table_columns]
        lines.append(f"| lead | {len(data['tasks'][task]['concepts'])} | " + " | ".join(lead) + " |")
    verdicts = retention_lines(data, tasks, names)
    return [*lines, "", *verdicts, *([""] if verdicts else [])]


def retention(data: dict, tasks: list[str], name: str, key: str) -> str | None:
    """``holds``, ``falls`` or ``rises``: a variant's ``key`` at the largest N against the
    smallest, by their 95% intervals (overlapping: holds); ``None`` without both."""
    first, last = data["results"][tasks[0]].get(name), data["results"][tasks[-1]].get(name)
    if not first or not last or first.get(key) is None or last.get(key) is None:
        return None
    if overlap(first.get(f"{key}_ci"), last.get(f"{key}_ci")):
        return "holds"
    return "falls" if last[key] < first[key] else "rises"


def retention_lines(data: dict, tasks: list[str], names: list[str]) -> list[str]:
    """Per variant, Acc_neighbour and Acc_far from the smallest N to the largest, and
    whether MACE's claim (its retention holds as N grows while UCE's and ESD's fall) is
    measured true here."""
    if len(tasks) < 2:
        return []
    small, large = (len(data["tasks"][t]["concepts"]) for t in (tasks[0], tasks[-1]))
    parts = []
    for name in names:
        verdicts = [f"{label} {_number(data['results'][tasks[0]][name][key])} -> "
                    f"{_number(data['results'][tasks[-1]][name][key])} {retention(data, tasks, name, key)}"
                    for key, label in (("acc_neighbour", "neighbours"), ("acc_far", "far"))
                    if retention(data, tasks, name, key)]
        if verdicts:
            parts.append(f"{name}: {', '.join(verdicts)}")
    lines = [f"Retention from N = {small} to N = {large} (holds: the two 95% intervals overlap): " + "; ".join(parts) + "."]
    methods = {name: next(data["results"][t][name]["method"] for t in tasks if name in data["results"][t])
               for name in names if name != "base"}
    mace = [n for n, method in methods.items() if method == "mace"]
    others = [n for n, method in methods.items() if method in ("uce", "esd")]
    unmeasured = [n for n in mace + others if retention(data, tasks, n, "acc_neighbour") is None]
    if mace and others and unmeasured:
        lines.append(f"MACE's claim (its retention holds as N grows while UCE's and ESD's fall): not measured here, "
                     f"no rows at both N = {small} and N = {large} for {', '.join(unmeasured)}.")
    elif mace and others:
        holds = all(retention(data, tasks, n, k) == "holds" for n in mace for k in ("acc_neighbour", "acc_far"))
        fall = all(any(retention(data, tasks, n, k) == "falls" for k in ("acc_neighbour", "acc_far")) for n in others)
        verdict = "true" if holds and fall else "false"
        lines.append(f"MACE's claim (its retention holds as N grows while UCE's and ESD's fall), measured here: "
                     f"{verdict} (MACE holds: {'yes' if holds else 'no'}; every UCE and ESD variant falls on "
                     f"neighbours or far pairs: {'yes' if fall else 'no'}).")
    return lines


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
                          + (f", run {spec['restarts']} times with consecutive seeds (any of {spec['restarts']}: the "
                             "share of rows at least one run breaks)" if spec.get("restarts", 1) > 1 else "")
                          for name, spec in data["attack_settings"].items())
        attacked = (f"; ASR: post-attack attack success rate, the share of the task's first {rows} erased rows (n = "
                    f"{rows} per cell, Wilson intervals) whose attacked image the world classifier calls the concept, "
                    f"the base row attacking the base model itself; attacks: {where}, on top of configs/attacks/*/mini-sd.yaml, "
                    "Ring-A-Bell's prompts (base model only) shared by every row of a task")
    suite = f"suite `{data['suite']}`, " if data.get("suite") else ""
    return (f"Accuracies in % of images classified as the row's class by the world classifier (pairs: shape and "
            f"colour both right); Acc_e held-out and H_o: erased rows in phrasings no method trains on, Acc_e seen: in "
            f"phrasings some method's templates hold; CLIP: mini-clip score on retained prompts{attacked}; {cost}. "
            f"{data['model']}, {suite}{mode}, {data['device']}, torch {torch.__version__}, "
            f"{data['minutes']:.1f} min {spent} ({data.get('cpu_minutes', 0):.1f} CPU min over all processes, "
            f"{data.get('jobs', 1)} cell{'s' if data.get('jobs', 1) > 1 else ''} at a time), load average "
            f"{data.get('load_average', 0):.1f} at the end (`erase-bench`).")


def task_record(task: Task) -> dict:
    return {"concepts": list(task.concepts), "prompts": task.prompts, "description": task.description,
            "kind": task.kind, "quick_rows": task.quick_rows}


def write(path: Path, text: str) -> None:
    from .atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def markers(suite: str | None) -> tuple[str, str]:
    """The README markers around a suite's tables (``<!-- benchmark:mass:begin -->``), or
    around a run without a suite (``<!-- benchmark:begin -->``).

    Args:
        suite: the suite's name, or ``None``.
    """
    name = f"benchmark:{suite}" if suite else "benchmark"
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_readme_block(readme: Path, markdown: str, suite: str | None = None) -> None:
    """Replace the text between a suite's begin and end markers (``markers``).

    Args:
        readme: the markdown file holding the markers.
        markdown: the new block's content.
        suite: whose markers; ``None``: the plain ``<!-- benchmark:begin -->`` ones.
    """
    begin, end = markers(suite)
    text = _readme_text(readme, suite)
    block = f"{begin}\n{markdown}{end}"
    write(readme, re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S))


def _readme_text(readme: Path, suite: str | None = None) -> str:
    if not readme.is_file():
        raise ErasureError(f"{readme}: no such file (--readme names the file that holds the benchmark block)")
    text = readme.read_text(encoding="utf-8")
    begin, end = markers(suite)
    if not re.search(re.escape(begin) + ".*?" + re.escape(end), text, flags=re.S):
        raise ErasureError(f"{readme} has no {begin} ... {end} block")
    return text


# ---- the command line ----


def build_parser(tasks: dict[str, Task], variants: dict[str, Variant], suites: dict[str, Suite],
                 attack_plan: AttackPlan) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="erase-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    described = "; ".join(f"{name}: {suite.description}" for name, suite in suites.items())
    parser.add_argument("--suite", choices=[*suites, "all"],
                        help=f"the tasks, variants and attacks of one suite ({described}); all: each in turn "
                             "(the default without --tasks or --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="the quick tasks, fewer rows, sampling and training steps, erasing in this process (for CI)")
    parser.add_argument("--tasks", nargs="+", choices=list(tasks),
                        help="instead of a suite's (with --quick: default those with quick_rows)")
    parser.add_argument("--methods", nargs="+", choices=list(variants), help="variants (default: the suite's, or all)")
    parser.add_argument("--attacks", nargs="*", choices=list(attack_plan.columns), default=None,
                        help="attacks with an ASR column (default: the suite's; without a suite every one of "
                             "configs/benchmark/attacks.yaml; none without names)")
    parser.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=None,
                        help="erase in this process (default with --quick) or in an erase child process")
    parser.add_argument("--model", default="mini-sd", help="mini-sd, or a folder of a shapes-world pipeline")
    parser.add_argument("--output", type=Path,
                        help="default: runs/benchmark, shared by the suites (runs/benchmark-quick with --quick)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="cells (a task's base model, or one variant on it) at once, each in its own process with "
                             "a share of the CPU threads (default 1; on CPU, one per core: --jobs 2 on 2 cores)")
    parser.add_argument("--readme", type=Path, metavar="FILE",
                        help="also write the tables into FILE (e.g. README.md) between the suite's benchmark markers")
    return parser


def plan_runs(args, tasks: dict[str, Task], variants: dict[str, Variant], suites: dict[str, Suite]) -> list[dict]:
    """The runs a command line asks for: per run its suite (or ``None``), tasks, variants and attacks.

    With ``--quick`` a suite runs those of its tasks that have ``quick_rows`` (``--tasks`` names others).

    Args:
        args: the parsed command line (``build_parser``).
        tasks, variants, suites: what the configs hold.

    Raises:
        ErasureError: ``--quick`` with a suite none of whose tasks has ``quick_rows``.
    """
    if args.suite is None and (args.tasks or args.quick):
        chosen = [tasks[name] for name in args.tasks] if args.tasks else [t for t in tasks.values() if t.quick_rows]
        return [{"suite": None, "tasks": chosen, "variants": [variants[n] for n in args.methods or variants],
                 "attacks": args.attacks}]
    runs = []
    for suite in suites.values() if args.suite in (None, "all") else [suites[args.suite]]:
        chosen = [tasks[n] for n in args.tasks or suite.tasks]
        if args.quick and not args.tasks:  # a task without quick_rows would run its full set
            chosen = [task for task in chosen if task.quick_rows]
            if not chosen:
                raise ErasureError(f"suite {suite.name!r} has no quick task: give one of its tasks quick_rows in "
                                   f"{benchmark_dir() / 'tasks.yaml'}, or run it without --quick")
        runs.append({"suite": suite.name, "tasks": chosen,
                     "variants": [variants[n] for n in args.methods or suite.methods or variants],
                     "attacks": list(suite.attacks) if args.attacks is None else args.attacks})
    return runs


def main(argv: list[str] | None = None) -> int:
    from .cli import quiet_libraries

    quiet_libraries()
    try:
        tasks, variants, attack_plan = load_tasks(), load_variants(), load_attacks()
        suites = load_suites(tasks, variants, attack_plan)
        args = build_parser(tasks, variants, suites, attack_plan).parse_args(argv)
        runs = plan_runs(args, tasks, variants, suites)
        if args.readme is not None:
            for planned in runs:
                _readme_text(args.readme, planned["suite"])  # before the run, not after it
        output = args.output or Path("runs") / ("benchmark-quick" if args.quick else "benchmark")
        for planned in runs:
            data = run(planned["tasks"], planned["variants"], output, model=args.model, device=args.device,
                       quick=args.quick, attacks=planned["attacks"], in_process=args.in_process, suite=planned["suite"],
                       plan=attack_plan, jobs=args.jobs)
            markdown = render(data)
            if args.readme is not None:
                write_readme_block(args.readme, markdown, planned["suite"])
            print(markdown)
    except ErasureError as error:
        print(f"erase-bench: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
