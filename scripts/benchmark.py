#!/usr/bin/env python
"""One benchmark: every method on the same erasure tasks of mini-sd, the same seeds, one table.

    python scripts/benchmark.py                   # every task, method and attack (time: README, Benchmark)
    python scripts/benchmark.py --quick           # fewer rows and iterations (tests/test_benchmark.py)
    python scripts/benchmark.py --attacks closed-form unlearndiffatk   # a subset of the attacks
    python scripts/benchmark.py --readme          # also write the table into README.md

Methods: UCE, RECE, ESD-x, ESD-x-strict, ESD-u and MACE, with the mini-sd settings of
``configs/<method>/mini-sd*.yaml``.

Tasks (prompt sets of ``eval_prompts/``, each with erased, retained and synonym rows):
one shape (circle), three shapes at once (circle, square, triangle), one colour
(purple; synonym "violet") and one rendering style (outlined; synonym "hollow").

Each method erases each task's concepts through the ``erase`` command, run as a child
process so that its wall time and peak memory are its own (loading included; the peak
resident memory the child records in the weights' ``extra``, and the GPU's peak
allocation when there is one). Every
accuracy comes from the evaluator (``erasure.evaluate``) on images generated with each
row's own seed: the world classifier's Acc_e, Acc_s, Acc_g and H_o (MACE's protocol),
mini-clip's CLIP score on the retained rows, and each attack's post-attack ASR: the
share of the task's first ``ATTACK_ROWS`` erased rows whose attacked image the world
classifier calls the concept (``erasure.eval.attack``; n per cell in the footnote). The
base model is attacked too, as its own base: its row is what each attack reaches when
nothing was erased. What the attacks cost is chosen to fit the whole run in an hour on
2 cores (``ATTACKS``): UnlearnDiffAtk at half its mini-sd timesteps, Ring-A-Bell searched
once per task and shared by every method (it reads only the base model's text encoder,
so its prompts are the same for every erased model), concept inversion on the one-shape
task only. The base model's images are made once per task and shared by every method
(hard links; the evaluator verifies each image's record before reusing it), attack
results are cached per task, so reruns resume where they stopped.

Writes ``<output>/benchmark.json`` and ``<output>/benchmark.md``; per task and method
the weights, the erase log and the evaluator's report folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
README = REPO / "README.md"
METRICS = ["world", "clip"]


@dataclass(frozen=True)
class Task:
    """An erasure task: what is erased and the prompt set that measures it."""

    concepts: tuple[str, ...]
    prompts: str
    description: str


TASKS = {
    "circle": Task(("circle",), "shapes/circle", "one shape"),
    "three-shapes": Task(("circle", "square", "triangle"), "shapes/circle-square-triangle", "three shapes at once"),
    "purple": Task(("purple",), "colours/purple", "one colour"),
    "outlined": Task(("outlined",), "styles/outlined", "one rendering style"),
}

# erase arguments per method; {kind} is the task's concept kind (MACE's templates differ per kind).
METHODS = {
    "uce": ["--method", "uce"],
    "rece": ["--method", "rece"],
    # configs/esd/mini-sd.yaml is esd-x-strict (attn2 keys and values); esd-x trains all of
    # attn2, where lr 2e-3 already costs other shapes, and esd-u 16 times more parameters
    # than esd-x, where lr 1e-3 wipes every shape.
    "esd-x": ["--method", "esd", "--config", "{configs}/esd/mini-sd.yaml", "--set", "variant=esd-x", "--set", "lr=1e-3"],
    "esd-x-strict": ["--method", "esd", "--config", "{configs}/esd/mini-sd.yaml"],
    "esd-u": ["--method", "esd", "--config", "{configs}/esd/mini-sd.yaml", "--set", "variant=esd-u", "--set", "lr=5e-5"],
    "mace": ["--method", "mace", "--config", "{configs}/mace/mini-sd{kind}.yaml"],
}
MACE_KIND = {"purple": "-colour", "outlined": "-style"}  # shapes use configs/mace/mini-sd.yaml
# Attacks: each attacks the first ATTACK_ROWS erased rows of a task (quick: QUICK_ATTACK_ROWS),
# with these settings on top of configs/attacks/<name>/mini-sd.yaml, on these tasks
# (None: all) and, in quick mode, for these methods (None: all; absent: not in quick mode).
ATTACK_ROWS = 6
QUICK_ATTACK_ROWS = 6


@dataclass(frozen=True)
class AttackSetting:
    options: dict
    tasks: tuple[str, ...] | None = None
    quick_methods: tuple[str, ...] | None = ()


ATTACKS = {
    "closed-form": AttackSetting({}, quick_methods=None),
    "unlearndiffatk": AttackSetting({"timesteps": 5}, quick_methods=("uce",)),  # 5 x 20 = 100 steps per row
    "ring-a-bell": AttackSetting({}),
    "concept-inversion": AttackSetting({}, tasks=("circle",)),
}
QUICK_ATTACK_OPTIONS = {"unlearndiffatk": {"timesteps": 3}}
# --quick: a third of each set's rows, and shorter training (still enough to erase).
QUICK_LIMIT = {"circle": 18, "three-shapes": 36, "purple": 18, "outlined": 18}
QUICK_SETTINGS = {"esd-x": ["iterations=150", "lr=2e-3"], "esd-x-strict": ["iterations=150", "lr=2e-3"],
                  "esd-u": ["iterations=150"],
                  "mace": ["train_steps=20", "images_per_concept=4"]}

# Column -> (label, better): the table bolds the best method per task and column.
COLUMNS = {
    "acc_e": ("Acc_e ↓", min),
    "acc_s": ("Acc_s ↑", max),
    "acc_g": ("Acc_g ↓", min),
    "h_o": ("H_o ↑", max),
    "clip_retained": ("CLIP retained ↑", max),
    **{f"asr_{name}": (f"ASR {name} ↓", min) for name in ATTACKS},
    "seconds": ("time s ↓", min),
    "peak_mb": ("peak MB ↓", min),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rows and training steps (for CI)")
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--attacks", nargs="*", choices=list(ATTACKS), default=list(ATTACKS),
                   help="attacks to run (none: --attacks with no name)")
    p.add_argument("--model", default="mini-sd", help="mini-sd, or a folder of a shapes-world pipeline")
    p.add_argument("--output", type=Path, help="default: runs/benchmark (runs/benchmark-quick with --quick)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--readme", action="store_true", help="write the table into README.md between its markers")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    # Absolute: each erase runs in its task's folder.
    output = (args.output or REPO / "runs" / ("benchmark-quick" if args.quick else "benchmark")).resolve()
    import erasure

    pipe = erasure.load_pipeline(args.model, device=args.device, dtype="float32")
    started = time.perf_counter()
    results = {}
    # A rerun into the same folder resumes; its wall time then covers only what was left.
    resumed = False
    for task_name in args.tasks:
        task = TASKS[task_name]
        limit = QUICK_LIMIT[task_name] if args.quick else None
        folder = output / task_name
        resumed |= (folder / "base" / "report.json").is_file()
        base = evaluate(pipe, None, task_name, "base", folder / "base", limit, args)
        results[task_name] = {"base": row_of(base, "base", None)}
        for method in args.methods:
            weights, erase_run = erase(method, task_name, args, folder)
            share_base_images(folder / "base" / "base", folder / method / "base")
            report = evaluate(pipe, weights, task_name, method, folder / method, limit, args)
            results[task_name][method] = row_of(report, "erased", erase_run)
    data = {"quick": args.quick, "model": args.model, "device": args.device, "minutes": (time.perf_counter() - started) / 60,
            "resumed": resumed, "attacks": attack_record(args),
            "tasks": {name: vars_of(TASKS[name]) for name in args.tasks}, "results": results,
            "winners": winners(results)}
    markdown = render(data)
    write(output / "benchmark.json", json.dumps(data, indent=2) + "\n")
    write(output / "benchmark.md", markdown)
    if args.readme:
        write_readme_block(markdown)
    print(markdown)
    return data


def evaluate(pipe, weights: Path | None, task_name: str, method: str, folder: Path, limit: int | None, args):
    """The evaluator's report for the base model (``weights=None``, attacked as its own
    base) or erased weights, with the attacks that apply to this task and method."""
    import erasure

    names = attacks_for(task_name, method, args)
    options = {name: {**ATTACKS[name].options, **(QUICK_ATTACK_OPTIONS.get(name, {}) if args.quick else {})}
               for name in names}
    return erasure.evaluate(pipe, weights, TASKS[task_name].prompts, METRICS, folder, limit=limit, batch_size=64,
                            attack=names or None, attack_options={k: v for k, v in options.items() if v},
                            attack_types=("erased",), attack_limit=QUICK_ATTACK_ROWS if args.quick else ATTACK_ROWS,
                            attack_cache=folder.parent / "attack-cache", html=weights is not None)


def attacks_for(task_name: str, method: str, args) -> list[str]:
    """The attacks run on one task and method (the base row: as for any method)."""
    chosen = []
    for name in args.attacks:
        setting = ATTACKS[name]
        if setting.tasks is not None and task_name not in setting.tasks:
            continue
        quick_methods = setting.quick_methods
        if args.quick and quick_methods is not None and not (quick_methods and method in (*quick_methods, "base")):
            continue
        chosen.append(name)
    return chosen


def attack_record(args) -> dict:
    """What the attack columns were run with."""
    return {"attacks": list(args.attacks), "rows_per_cell": QUICK_ATTACK_ROWS if args.quick else ATTACK_ROWS,
            "settings": {name: vars(ATTACKS[name]) for name in args.attacks},
            "quick_options": QUICK_ATTACK_OPTIONS if args.quick else None}


def erase(method: str, task_name: str, args, folder: Path) -> tuple[Path, dict]:
    """Run ``erase`` in a child process (unless a previous run left its result) and
    return the weights and the child's wall time and peak memory."""
    weights, record = folder / f"{method}.safetensors", folder / f"{method}.erase.json"
    if weights.is_file() and record.is_file():
        return weights, json.loads(record.read_text())
    command = erase_command(method, task_name, args, weights)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{method}.erase.log", "w") as log:
        started = time.perf_counter()
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
        seconds = time.perf_counter() - started
    if finished.returncode != 0:
        sys.exit(f"benchmark: {' '.join(command)} failed; see {folder / f'{method}.erase.log'}")
    from erasure.weights import EditedWeights

    extra = EditedWeights.load(weights).extra
    result = {"seconds": round(seconds, 1), "erase_seconds": extra.get("erase_seconds"),
              "peak_mb": extra["peak_rss_mb"], "peak_gpu_mb": extra.get("peak_gpu_mb"), "command": command}
    write(record, json.dumps(result, indent=2) + "\n")
    return weights, result


def erase_command(method: str, task_name: str, args, weights: Path) -> list[str]:
    task = TASKS[task_name]
    fill = {"configs": str(CONFIGS), "kind": MACE_KIND.get(task_name, "")}
    command = [sys.executable, "-m", "erasure.cli", *[a.format(**fill) for a in METHODS[method]],
               "--concepts", ", ".join(task.concepts), "--model", args.model, "--device", args.device,
               "--output", str(weights), "--overwrite"]
    if args.quick:
        for setting in QUICK_SETTINGS.get(method, []):
            command += ["--set", setting]
    return command


def share_base_images(source: Path, target: Path) -> None:
    """Hard-link the task's base images into a method's report folder (copies if links fail)."""
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    for image in source.glob("*.png"):
        destination = target / image.name
        if destination.exists():
            continue
        try:
            os.link(image, destination)
        except OSError:
            shutil.copy2(image, destination)


def row_of(report, variant: str, erase_run: dict | None) -> dict:
    """One table row from an evaluator report."""
    world = report.data["metrics"]["world"]
    scores = world[variant]["erasure"]
    row = {key: scores[key] for key in ("acc_e", "acc_s", "acc_g", "h_o")}
    row["clip_retained"] = report.data["metrics"]["clip"][variant]["groups"]["retained"]["mean"]
    for name in ATTACKS:
        entry = report.data["attacks"].get(name)
        row[f"asr_{name}"] = entry["groups"]["erased"]["post_asr"] if entry else None
        row[f"attack_seconds_{name}"] = entry["seconds_this_run"] if entry else None
    row["seconds"] = erase_run["seconds"] if erase_run else None
    row["peak_mb"] = erase_run["peak_mb"] if erase_run else None
    row["report"] = str(report.output_dir)
    return row


def winners(results: dict) -> dict:
    """Per task and column, the method(s) with the best value (the base row competes in none)."""
    best = {}
    for task, rows in results.items():
        methods = {m: r for m, r in rows.items() if m != "base"}
        best[task] = {}
        for column, (_, better) in COLUMNS.items():
            values = {m: r[column] for m, r in methods.items() if r.get(column) is not None}
            if values:
                target = better(values.values())
                best[task][column] = sorted(m for m, v in values.items() if round(v, 1) == round(target, 1))
    return best


def render(data: dict) -> str:
    lines = []
    for task, rows in data["results"].items():
        spec = data["tasks"][task]
        lines += [f"**{spec['description']}**: erase {', '.join(spec['concepts'])} (`{spec['prompts']}`)", ""]
        lines += ["| method | " + " | ".join(label for label, _ in COLUMNS.values()) + " |",
                  "|---|" + "---:|" * len(COLUMNS)]
        for method, row in rows.items():
            cells = [_cell(row.get(c), method in data["winners"][task].get(c, [])) for c in COLUMNS]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(_footnote(data))
    return "\n".join(lines) + "\n"


def _cell(value, bold: bool) -> str:
    if value is None:
        return "-"
    text = f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"
    return f"**{text}**" if bold else text


def _footnote(data: dict) -> str:
    import torch

    mode = "quick mode (fewer rows and steps)" if data["quick"] else "full sets"
    spent = "in this run, which resumed an earlier one" if data["resumed"] else "in all"
    attacks = data["attacks"]
    settings = "; ".join(f"{name}" + (f" on {', '.join(ATTACKS[name].tasks)} only" if ATTACKS[name].tasks else "")
                         + (f" ({', '.join(f'{k} {v}' for k, v in ATTACKS[name].options.items())})" if ATTACKS[name].options else "")
                         for name in attacks["attacks"])
    return (f"Accuracies in % of images classified as the row's class by the world classifier; CLIP: mini-clip score "
            f"on retained prompts; ASR: post-attack attack success rate, the share of the task's first "
            f"{attacks['rows_per_cell']} erased rows (n = {attacks['rows_per_cell']} per cell, one image "
            f"{100 / attacks['rows_per_cell']:.0f} points) whose attacked image the world classifier calls the concept; "
            f"the base row attacks the base model itself. Attacks: {settings}, with configs/attacks/*/mini-sd.yaml; "
            f"Ring-A-Bell's prompts depend on the base model only and are shared by every row of a task. Time and "
            f"peak resident memory: the whole `erase` process, model loading included. "
            f"Best per column in bold. {data['model']}, {mode}, {data['device']}, torch {torch.__version__}, "
            f"{data['minutes']:.1f} min {spent} (`python scripts/benchmark.py`).")


def vars_of(task: Task) -> dict:
    return {"concepts": list(task.concepts), "prompts": task.prompts, "description": task.description}


def write(path: Path, text: str) -> None:
    from erasure.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_readme_block(markdown: str) -> None:
    block = f"<!-- benchmark:begin -->\n{markdown}<!-- benchmark:end -->"
    text = README.read_text(encoding="utf-8")
    if "<!-- benchmark:begin -->" not in text:
        sys.exit("benchmark: README.md has no <!-- benchmark:begin --> ... <!-- benchmark:end --> block")
    write(README, re.sub(r"<!-- benchmark:begin -->.*?<!-- benchmark:end -->", lambda _: block, text, flags=re.S))


if __name__ == "__main__":
    main()
