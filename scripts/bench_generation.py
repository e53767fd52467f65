#!/usr/bin/env python
"""Images per second of erase-eval's generation against a bare diffusers pipeline call.

    python scripts/bench_generation.py                       # mini-sd, 1 thread, 64 images, 4 pairs
    python scripts/bench_generation.py --threads 1 2 --output bench-generation.json
    python scripts/bench_generation.py --profile             # where erase-eval's time goes (cProfile)

Both sides generate the same rows (a bundled prompt set, each row's own prompt) with the
same settings (the model's ``erasure_defaults.json``) and the same batch size, on the
same loaded pipeline:

- bare: ``pipe(prompts, num_inference_steps, guidance_scale, height, width,
  generator=torch.Generator().manual_seed(0)).images`` per batch, images left in memory;
- ours: ``erasure.eval.generate.generate_images`` into a fresh folder, which is what
  ``erase-eval`` runs per variant: per-row seeded generators, image records, atomic PNG
  writes (on a worker thread), the resumability checks.

Runs alternate (bare, ours, bare, ours...) after one warm-up batch of each, so that load
from other processes falls on both alike; the ratio is taken per pair and its median
reported, with the same ratio in CPU seconds (bare's over ours'), which other processes
on a shared machine disturb less. Target: ours at least 95% of bare.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import torch

from erasure.eval.generate import generate_images, plan_batches
from erasure.eval.prompts import load_prompt_set
from erasure.generation import generation_settings
from erasure.loading import load_pipeline

PROMPTS = "shapes/circle-square-triangle"  # 108 rows, the largest bundled mini-sd set


def bare(pipe, batches, settings) -> None:
    """A plain diffusers call per batch: the reference."""
    for batch in batches:
        pipe([row.prompt for row in batch], **settings.pipeline_kwargs(), generator=torch.Generator().manual_seed(0)).images


def ours(pipe, rows, settings, model: str) -> None:
    """erase-eval's generation of one variant, into a fresh folder."""
    with tempfile.TemporaryDirectory() as folder:
        generate_images(pipe, rows, folder, settings, model, description="ours")


def timed(run) -> tuple[float, float]:
    """Wall seconds and CPU seconds (every thread of the process) of ``run()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(pipe, rows, settings, model: str, pairs: int) -> dict:
    """Alternating timed runs: images/s of each (wall clock), their per-pair ratio
    ours/bare, and the same ratio in CPU seconds (less sensitive to other processes)."""
    batches = plan_batches(rows, settings)
    bare(pipe, batches[:1], settings)  # warm-up: first-call allocations, lazy imports
    ours(pipe, batches[0], settings, model)
    runs = {"bare": [], "ours": []}
    for _ in range(pairs):
        runs["bare"].append(timed(lambda: bare(pipe, batches, settings)))
        runs["ours"].append(timed(lambda: ours(pipe, rows, settings, model)))
    rates = {side: [len(rows) / wall for wall, _ in times] for side, times in runs.items()}
    ratios = [o / b for o, b in zip(rates["ours"], rates["bare"])]
    cpu_ratios = [b[1] / o[1] for o, b in zip(runs["ours"], runs["bare"])]
    return {
        "images": len(rows),
        "pairs": pairs,
        "bare_images_per_second": [round(r, 3) for r in rates["bare"]],
        "ours_images_per_second": [round(r, 3) for r in rates["ours"]],
        "median_bare": round(statistics.median(rates["bare"]), 3),
        "median_ours": round(statistics.median(rates["ours"]), 3),
        "median_ratio": round(statistics.median(ratios), 4),
        "min_ratio": round(min(ratios), 4),
        "median_cpu_ratio": round(statistics.median(cpu_ratios), 4),
    }


def profile(pipe, rows, settings, model: str, top: int = 25) -> str:
    """cProfile of one run of ours: the share of time inside the pipeline call, and the top functions."""
    profiler = cProfile.Profile()
    profiler.enable()
    ours(pipe, rows, settings, model)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    inside = next((v[3] for k, v in stats.stats.items() if k[2] == "__call__" and "pipeline_" in k[0]), 0.0)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(top)
    return f"total {total:.2f} s, inside the pipeline call {inside:.2f} s ({100 * inside / total:.1f}%)\n" + text.getvalue()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mini-sd", help="what load_pipeline accepts (default mini-sd)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", default=PROMPTS, help=f"prompt set (default {PROMPTS})")
    parser.add_argument("--images", type=int, default=64, help="rows generated per run (default 64)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="torch CPU threads, one measurement each")
    parser.add_argument("--pairs", type=int, default=4, help="alternating bare/ours pairs per thread count")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of one run of ours")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)

    pipe = load_pipeline(args.model, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    rows = load_prompt_set(args.prompts, limit=args.images).rows
    settings = generation_settings(pipe, batch_size=args.batch_size, model=args.model)
    results = {"model": args.model, "device": args.device, "prompts": args.prompts, "settings": settings.record(),
               "batch_size": settings.batch_size, "torch": torch.__version__, "by_threads": {}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        result = measure(pipe, rows, settings, args.model, args.pairs)
        results["by_threads"][str(threads)] = result
        print(f"{threads} thread(s), {result['images']} images x {result['pairs']} pairs: bare {result['median_bare']:.2f} "
              f"images/s, ours {result['median_ours']:.2f} images/s, ours/bare median {result['median_ratio']:.3f} "
              f"(min {result['min_ratio']:.3f}); in CPU seconds {result['median_cpu_ratio']:.3f}")
    if args.profile:
        print(profile(pipe, rows, settings, args.model))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
