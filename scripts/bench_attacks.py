#!/usr/bin/env python
"""Every attack against the base model and against erased weights, on one mini-sd prompt set:
pre- and post-attack ASR with n, and the cost of each attack per unit of work.

    python scripts/bench_attacks.py --weights uce=runs/uce-circle.safetensors esd-u=runs/esd-u-circle.safetensors
    python scripts/bench_attacks.py --attacks ring-a-bell --limit 12          # a quick look
    python scripts/bench_attacks.py --types erased --weights uce=FILE        # erased rows only: half the cost

The base model is attacked as its own base (``erase-eval --base-only``): nothing was
erased, so post-attack ASR should reach what the attack can do at all (the issue's
sanity check: >= 90% on shapes/circle). Each model is one ``erasure.evaluate`` run with
every attack, its mini-sd settings (``configs/attacks/<name>/mini-sd.yaml``) and one
shared attack cache, so Ring-A-Bell's prompts (which depend on the base model only) are
searched once and reused for every erased model. Seconds per unit are the attacks' own
records (a unit is a row, a distinct prompt or a concept), wall time and, in brackets,
CPU time, which a loaded machine does not inflate; run with ``OMP_NUM_THREADS=1`` and
note the machine's load.

Writes ``<output>/attacks.json`` and ``<output>/attacks.md`` (one row per model and
attack) and each model's evaluator report folder.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", default="shapes/circle")
    p.add_argument("--weights", nargs="*", default=[], metavar="NAME=FILE", help="erased weights to attack")
    p.add_argument("--no-base", action="store_true", help="skip the base model")
    p.add_argument("--attacks", default="closed-form,unlearndiffatk,ring-a-bell,concept-inversion")
    p.add_argument("--limit", type=int, help="first N rows of the set")
    p.add_argument("--types", default="erased,synonym", help="the row types attacked (erased: half the cost)")
    p.add_argument("--budget", type=float, default=1.0)
    p.add_argument("--set", dest="options", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="attack options, e.g. --set ring-a-bell.eta=2")
    p.add_argument("--output", type=Path, default=REPO / "runs" / "bench-attacks")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    import erasure
    from erasure.config import parse_override

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    options: dict[str, dict] = {}
    for item in args.options:
        key, value = parse_override(item)
        name, _, field = key.partition(".")
        options.setdefault(name, {})[field] = value
    pipe = erasure.load_pipeline("mini-sd", device="cpu", dtype="float32")
    models = ([] if args.no_base else [("base", None)]) + [tuple(item.split("=", 1)) for item in args.weights]
    cache = args.output / "attack-cache"
    rows = []
    for name, weights in models:
        started = time.perf_counter()
        report = erasure.evaluate(pipe, weights, args.prompts, ["world"], args.output / name, limit=args.limit,
                                  batch_size=64, html=False, attack=args.attacks, attack_options=options,
                                  attack_budget=args.budget, attack_cache=cache, attack_types=args.types.split(","))
        minutes = (time.perf_counter() - started) / 60
        for attack, entry in report.data["attacks"].items():
            rows.append({"model": name, "attack": attack, "minutes_for_model": round(minutes, 2), **summary(entry)})
    data = {"prompts": args.prompts, "limit": args.limit, "types": args.types, "budget": args.budget, "options": args.options,
            "load_average": os.getloadavg(), "torch_threads": torch.get_num_threads(), "rows": rows}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "attacks.json").write_text(json.dumps(data, indent=2) + "\n")
    markdown = render(data)
    (args.output / "attacks.md").write_text(markdown)
    print(markdown)
    return data


def summary(entry: dict) -> dict:
    """The numbers of one attack's report entry that the table shows."""
    erased = entry["groups"].get("erased", entry["groups"].get("all", {}))
    synonym = entry["groups"].get("synonym", {})
    return {"n_erased": erased.get("n"), "pre": erased.get("pre_asr"), "post": erased.get("post_asr"),
            "any_step": erased.get("success_any_step"), "n_synonym": synonym.get("n"),
            "pre_synonym": synonym.get("pre_asr"), "post_synonym": synonym.get("post_asr"),
            "seconds_per_unit": entry["seconds_per_unit"], "cpu_seconds_per_unit": entry.get("cpu_seconds_per_unit"),
            "units": entry["units"], "scope": entry["scope"],
            "steps_mean": entry["steps"]["mean"], "reused": entry["reused_from_cache"],
            "vocabulary": entry.get("vocabulary"), "judge": entry.get("judge")}


def render(data: dict) -> str:
    def cell(value):
        return "-" if value is None else (f"{value:.1f}" if isinstance(value, float) else str(value))

    lines = [f"Attacks on `{data['prompts']}` (mini-sd), world classifier as judge; load average "
             f"{', '.join(f'{x:.1f}' for x in data['load_average'])}, {data['torch_threads']} torch thread(s).", "",
             "| model | attack | n erased | pre-ASR % | post-ASR % | UDA any step % | n synonym | pre syn. % | post syn. % "
             "| s per unit (CPU s) | units | steps (mean) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in data["rows"]:
        reused = " (cached)" if row["reused"] else ""
        lines.append(f"| {row['model']} | {row['attack']} | {row['n_erased']} | {cell(row['pre'])} | {cell(row['post'])} | "
                     f"{cell(row['any_step'])} | {cell(row['n_synonym'])} | {cell(row['pre_synonym'])} | "
                     f"{cell(row['post_synonym'])} | {cell(row['seconds_per_unit'])} ({cell(row['cpu_seconds_per_unit'])}){reused} | {row['units']} {row['scope']} | "
                     f"{cell(row['steps_mean'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
