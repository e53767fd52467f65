"""Erase one or several shapes from mini-sd with MACE on the CPU and measure the erasure.

    python scripts/mace_mini_sd.py --shapes circle                    # configs/mace/mini-sd.yaml
    python scripts/mace_mini_sd.py --shapes circle square triangle    # three at once
    python scripts/mace_mini_sd.py --shapes star --set lam=100        # any MACEConfig override

Generates "a {colour} {shape}" for every shape and colour with the same seeds before
and after the erasure, at mini-sd's recommended settings, classifies the images with
the world classifier, and prints the share classified as the prompted shape: the erased
shapes' (target: <= 10%), the other shapes' relative to their base accuracy (target:
>= 90%) and the erased shapes' synonyms ("disk" for circle; target: <= 25%). The
erasure's CPU time per concept is printed too.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import erasure
from erasure.assets import generation_defaults
from erasure.config import configs_dir, parse_override
from erasure.world.captions import SYNONYMS, object_prompt
from erasure.world.classifier import load_world_classifier
from erasure.world.scenes import COLOURS, SHAPES


@torch.no_grad()
def shape_accuracy(pipe, classifier, prompts: dict[str, list[str]], seeds: int, batch_size: int = 64) -> dict:
    """Per label: share of its prompts' images (``seeds`` each) classified as that shape."""
    defaults = generation_defaults("mini-sd")
    cases = [(label, prompt, seed) for label, texts in prompts.items() for prompt in texts for seed in range(seeds)]
    hits: dict[str, list[bool]] = {label: [] for label in prompts}
    for start in range(0, len(cases), batch_size):
        chunk = cases[start : start + batch_size]
        images = pipe(
            [prompt for _, prompt, _ in chunk],
            height=defaults["resolution"],
            width=defaults["resolution"],
            num_inference_steps=defaults["num_inference_steps"],
            guidance_scale=defaults["guidance_scale"],
            generator=[torch.Generator().manual_seed(1000 + seed) for _, _, seed in chunk],
            output_type="pt",
        ).images
        predicted = classifier.classify(images.float()).shape
        for (label, _, _), shape in zip(chunk, predicted):
            hits[label].append(shape == label.split(":")[-1])
    return {label: sum(h) / len(h) for label, h in hits.items()}


def evaluation_prompts(erased: list[str]) -> dict[str, list[str]]:
    prompts = {shape: [object_prompt(shape, colour) for colour in COLOURS] for shape in SHAPES}
    for shape in erased:
        prompts[f"synonym:{shape}"] = [object_prompt(word, colour) for word in SYNONYMS[shape] for colour in COLOURS]
    return prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["circle"], choices=SHAPES)
    parser.add_argument("--config", default=str(configs_dir() / "mace" / "mini-sd.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", type=int, default=10, help="images per prompt (6 colours per shape)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = erasure.load_pipeline("mini-sd", device="cpu", dtype="float32")
    classifier = load_world_classifier()
    overrides = dict(parse_override(item) for item in args.overrides)
    config = erasure.resolve_config("mace", "object", args.config, **overrides)
    started, cpu_started = time.perf_counter(), time.process_time()
    edited = erasure.erase(pipe, "mace", args.shapes, "object", config)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started

    prompts = evaluation_prompts(args.shapes)
    base = shape_accuracy(pipe, classifier, prompts, args.seeds)
    edited.apply(pipe)
    after = shape_accuracy(pipe, classifier, prompts, args.seeds)
    others = [s for s in SHAPES if s not in args.shapes]
    result = {
        "shapes": args.shapes,
        "config": edited.config,
        "erase_seconds": round(seconds, 1),
        "erase_cpu_seconds": round(cpu_seconds, 1),
        "seconds_per_concept": round(seconds / len(args.shapes), 1),
        "stages": edited.extra["seconds"],
        "threads": torch.get_num_threads(),
        "images_per_shape": 6 * args.seeds,
        "base": base,
        "erased": after,
        "erased_accuracy_max": max(after[s] for s in args.shapes),
        "others_min_ratio": min(after[s] / base[s] for s in others if base[s] > 0),
        "synonym_accuracy_max": max(after[f"synonym:{s}"] for s in args.shapes),
    }
    print(f"MACE erase of {', '.join(args.shapes)}: {seconds:.0f} s wall, {cpu_seconds:.0f} s CPU "
          f"on {torch.get_num_threads()} thread(s), {seconds / len(args.shapes):.0f} s per concept")
    print("stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in edited.extra["seconds"].items()))
    print(f"{'prompt':<20}{'base':>7}{'erased':>8}")
    for label in prompts:
        print(f"{label:<20}{base[label]:>7.0%}{after[label]:>8.0%}")
    print(f"erased shapes at most {result['erased_accuracy_max']:.0%} (target <= 10%); other shapes keep at least "
          f"{result['others_min_ratio']:.0%} of their base accuracy (target >= 90%); synonyms at most "
          f"{result['synonym_accuracy_max']:.0%} (target <= 25%)")
    if args.output:
        args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
