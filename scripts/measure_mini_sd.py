#!/usr/bin/env python
"""Measure what mini-sd knows and write the table into its model card.

    python scripts/measure_mini_sd.py              # 36 prompts x 50 seeds and smaller checks: about 10 minutes

Generates every "a {colour} {shape}" prompt with seeds 0..N-1 at the recommended
settings, classifies the images with the world classifier, and reports per shape and
per colour the share classified as prompted, and the share with both right (shape and
colour jointly, as the world metric scores the ``pairs/`` sets); then smaller checks: synonyms, styles,
empty-scene prompts and the unconditional prompt "". Results go to metrics.json and
into README.md between the measure_mini_sd markers.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm
from world_common import ASSETS, machine, setup, write_json, write_text

from erasure.eval.intervals import wilson
from erasure.loading import generation_defaults, load_pipeline
from erasure.world.captions import SYNONYMS, empty_prompts, object_prompt
from erasure.world.classifier import load_world_classifier
from erasure.world.scenes import COLOURS, SHAPES, STYLES


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ASSETS / "mini-sd"), help="pipeline folder")
    p.add_argument("--seeds", type=int, default=50, help="seeds per main prompt")
    p.add_argument("--extra-seeds", type=int, default=10, help="seeds per prompt of the smaller checks")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-card", action="store_true", help="print only; leave README.md and metrics.json alone")
    return p.parse_args()


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], defaults: dict, batch_size: int) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1], one per (prompt, seed) pair, in order."""
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="generate", mininterval=5):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch_size]]
        result = pipe(
            prompts[i : i + batch_size],
            height=defaults["resolution"],
            width=defaults["resolution"],
            num_inference_steps=defaults["num_inference_steps"],
            guidance_scale=defaults["guidance_scale"],
            generator=gens,
            output_type="pt",
        )
        out.append(result.images.float().cpu())
    return torch.cat(out)


def run(pipe, classifier, cases: list[tuple[str, dict]], seeds: int, defaults: dict, batch_size: int) -> list[dict]:
    """Generate ``seeds`` images per case (prompt, expected labels) and classify them."""
    prompts = [p for p, _ in cases for _ in range(seeds)]
    seed_list = [s for _ in cases for s in range(seeds)]
    preds = classifier.classify(generate(pipe, prompts, seed_list, defaults, batch_size))
    rows = []
    for k, (prompt, expected) in enumerate(cases):
        for j in range(k * seeds, (k + 1) * seeds):
            got = {"shape": preds.shape[j], "colour": preds.colour[j], "style": preds.style[j]}
            rows.append({"prompt": prompt, **{f"expected_{a}": v for a, v in expected.items()}, **{f"got_{a}": v for a, v in got.items()}})
    return rows


def accuracy(rows: list[dict], attribute: str, group: str) -> dict[str, float]:
    """Share of rows whose predicted ``attribute`` equals the expected one, per ``group`` value."""
    hits, total = defaultdict(int), defaultdict(int)
    for r in rows:
        key = r[f"expected_{group}"]
        total[key] += 1
        hits[key] += r[f"got_{attribute}"] == r[f"expected_{attribute}"]
    return {k: hits[k] / total[k] for k in total}


def _pair_right(row: dict) -> bool:
    """Shape and colour both classified as prompted: the world metric's ``pair`` attribute."""
    return row["got_shape"] == row["expected_shape"] and row["got_colour"] == row["expected_colour"]


def measure(pipe, classifier, args, defaults) -> dict:
    main_cases = [(object_prompt(s, c), {"shape": s, "colour": c}) for s in SHAPES for c in COLOURS]
    rows = run(pipe, classifier, main_cases, args.seeds, defaults, args.batch_size)
    synonym_cases = [(object_prompt(w, c), {"shape": s, "colour": c}) for s in SHAPES for w in SYNONYMS[s] for c in ("red", "blue", "yellow")]
    syn_rows = run(pipe, classifier, synonym_cases, args.extra_seeds, defaults, args.batch_size)
    style_cases = [(object_prompt(s, c, st), {"shape": s, "colour": c, "style": st}) for st in STYLES for s in SHAPES for c in ("green", "orange")]
    style_rows = run(pipe, classifier, style_cases, args.extra_seeds, defaults, args.batch_size)
    empty_cases = [(p, {"shape": "none"}) for p in empty_prompts()] + [("", {"shape": "none"})]
    empty_rows = run(pipe, classifier, empty_cases, args.extra_seeds, defaults, args.batch_size)
    uncond = defaultdict(int)
    for r in empty_rows:
        if r["prompt"] == "":
            uncond[r["got_shape"]] += 1
    n_uncond = sum(uncond.values())
    return {
        "settings": defaults,
        "seeds_per_prompt": args.seeds,
        "extra_seeds": args.extra_seeds,
        "shape_accuracy": accuracy(rows, "shape", "shape"),
        "colour_accuracy": accuracy(rows, "colour", "colour"),
        "shape_accuracy_mean": sum(r["got_shape"] == r["expected_shape"] for r in rows) / len(rows),
        "colour_accuracy_mean": sum(r["got_colour"] == r["expected_colour"] for r in rows) / len(rows),
        "pair_accuracy_mean": sum(_pair_right(r) for r in rows) / len(rows),
        "pair_accuracy": {p: sum(_pair_right(r) for r in rows if r["prompt"] == p) / args.seeds for p, _ in main_cases},
        "synonym_shape_accuracy": accuracy(syn_rows, "shape", "shape"),
        "style_accuracy": accuracy(style_rows, "style", "style"),
        "style_prompt_shape_accuracy": sum(r["got_shape"] == r["expected_shape"] for r in style_rows) / len(style_rows),
        "empty_prompt_none_rate": {p: sum(r["got_shape"] == "none" for r in empty_rows if r["prompt"] == p) / args.extra_seeds for p, _ in empty_cases if p},
        "unconditional_shape_distribution": {k: v / n_uncond for k, v in sorted(uncond.items())},
    }


def table(m: dict, minutes: float) -> str:
    lines = [
        f"Images from \"a {{colour}} {{shape}}\" (36 prompts x {m['seeds_per_prompt']} seeds, "
        f"{m['settings']['resolution']}x{m['settings']['resolution']}, {m['settings']['num_inference_steps']} DDIM steps, "
        f"guidance {m['settings']['guidance_scale']}), classified by `world-classifier`; "
        f"`python scripts/measure_mini_sd.py --seeds {m['seeds_per_prompt']}` ({minutes:.1f} min on {machine()}).",
        "",
        "| shape | shape accuracy | | colour | colour accuracy |",
        "|---|---|---|---|---|",
    ]
    for s, c in zip(SHAPES, COLOURS):
        lines.append(f"| {s} | {m['shape_accuracy'][s]:.1%} | | {c} | {m['colour_accuracy'][c]:.1%} |")
    lines.append(f"| **mean** | **{m['shape_accuracy_mean']:.1%}** | | **mean** | **{m['colour_accuracy_mean']:.1%}** |")
    syn = ", ".join(f"{s} {v:.0%}" for s, v in m["synonym_shape_accuracy"].items())
    sty = ", ".join(f"{s} {v:.0%}" for s, v in m["style_accuracy"].items())
    empty = ", ".join(f'"{p}" {v:.0%}' for p, v in m["empty_prompt_none_rate"].items())
    uncond = ", ".join(f"{s} {v:.0%}" for s, v in m["unconditional_shape_distribution"].items())
    n_main = 36 * m["seeds_per_prompt"]
    low, high = wilson(round(m["pair_accuracy_mean"] * n_main), n_main)
    worst = min(m["pair_accuracy"].items(), key=lambda kv: kv[1])
    lines += [
        "",
        f"- shape and colour jointly (both heads right, the world metric's `pair` attribute for `eval_prompts/pairs`): "
        f"{m['pair_accuracy_mean']:.1%} of {n_main:,} images (95% Wilson interval {low:.1f}-{high:.1f}%); lowest "
        f"prompt \"{worst[0]}\" {worst[1]:.0%}",
        f"- synonyms (\"a red disk\", ...; 2 synonyms x 3 colours x {m['extra_seeds']} seeds per shape), shape accuracy: {syn}",
        f"- styles (\"an outlined green star\", ...), style accuracy: {sty}; their shape accuracy {m['style_prompt_shape_accuracy']:.0%}",
        f"- empty-scene prompts classified as \"none\": {empty}",
        f"- the empty prompt \"\" (unconditional), classified as: {uncond}",
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    setup(0, args.threads)
    start = time.time()
    pipe = load_pipeline(args.model, device="cpu", dtype="float32")
    defaults = {"resolution": 32, "num_inference_steps": 25, "guidance_scale": 4.5, **generation_defaults(args.model)}
    metrics = measure(pipe, load_world_classifier(), args, defaults)
    minutes = (time.time() - start) / 60
    text = table(metrics, minutes)
    print(text)
    if args.no_card:
        return
    write_json(Path(args.model) / "metrics.json", metrics)
    readme = Path(args.model) / "README.md"
    block = f"<!-- measure_mini_sd:begin -->\n{text}\n<!-- measure_mini_sd:end -->"
    new = re.sub(r"<!-- measure_mini_sd:begin -->.*?<!-- measure_mini_sd:end -->", lambda _: block, readme.read_text(), flags=re.S)
    write_text(readme, new)


if __name__ == "__main__":
    main()
