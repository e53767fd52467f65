#!/usr/bin/env python
"""An attack's runs with different seeds against one erasure, read as an attacker with
restarts: each run's ASR, the pooled ASR, and the share of rows broken by any run
(``erasure.eval.restarts``).

    for s in 0 1 2 3 4; do
      erase-eval --prompts shapes/circle --model mini-sd --weights W --attack concept-inversion \
        --set attack.concept-inversion.seed=$s --output ci-$s
    done
    python scripts/attack_restarts.py --attack concept-inversion ci-0 ci-1 ci-2 ci-3 ci-4 --json restarts.json

Prints one line per attacked group (erased, synonym); ``--json`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from erasure.atomic import atomic_write
from erasure.errors import ArgumentParser, ErasureError
from erasure.eval.restarts import restart_summary
from erasure.eval.tables import fmt_interval


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="erase-eval --output folders, one per seed")
    parser.add_argument("--attack", default="concept-inversion", help="the attack's name (default: concept-inversion)")
    parser.add_argument("--json", type=Path, help="also write the numbers here (replaced if it exists)")
    args = parser.parse_args(argv)
    try:
        summary = restart_summary(args.folders, args.attack)
    except ErasureError as error:
        print(f"attack_restarts: error: {error}", file=sys.stderr)
        return 2
    print(f"{args.attack}, {summary['runs']} runs")
    for group, g in summary["groups"].items():
        runs = " / ".join(f"{v:.1f}" for v in g["per_run"])
        print(f"{group} (n = {g['n']} rows): per run {runs}; pooled {fmt_interval(g['pooled'], g['pooled_interval'])} "
              f"(n = {g['n'] * summary['runs']}); any of {summary['runs']} {fmt_interval(g['any'], g['any_interval'])}")
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
