"""Erase one shape from mini-sd with ESD on the CPU and measure the erasure.

    python scripts/esd_mini_sd.py --shape circle                      # configs/esd/mini-sd.yaml
    python scripts/esd_mini_sd.py --shape star --set iterations=100   # any ESDConfig override

Generates "a {colour} {shape}" for every shape and colour with the same seeds before
and after the erasure, at mini-sd's recommended settings, classifies the images with
the world classifier, and prints the share classified as the prompted shape: the
erased shape's (target: <= 20%), the other shapes' (target: >= 80% of their base
accuracy), and the erased shape's synonyms. The erasure's wall time is printed too.
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
def shape_accuracy(pipe, classifier, prompts: dict[str, list[str]], seeds: int, defaults: dict,
                   batch_size: int = 64) -> dict:
    """Per label: share of its prompts' images (``seeds`` each) classified as that shape."""
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
            generator=[torch.Generator().manual_seed(seed) for _, _, seed in chunk],
            output_type="pt",
        ).images
        predicted = classifier.classify(images.float()).shape
        for (label, _, _), shape in zip(chunk, predicted):
            hits[label].append(shape == label.split(":")[-1])
    return {label: sum(h) / len(h) for label, h in hits.items()}


def evaluation_prompts(erased: str) -> dict[str, list[str]]:
    prompts = {shape: [object_prompt(shape, colour) for colour in COLOURS] for shape in SHAPES}
    prompts[f"synonym:{erased}"] = [object_prompt(word, colour) for word in SYNONYMS[erased] for colour in COLOURS]
    return prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="circle", choices=SHAPES)
    parser.add_argument("--model", default="mini-sd", help="mini-sd, or a pipeline folder of the shapes world")
    parser.add_argument("--config", default=str(configs_dir() / "esd" / "mini-sd.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", type=int, default=10, help="images per prompt (6 colours per shape)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = erasure.load_pipeline(args.model, device="cpu", dtype="float32")
    defaults_file = Path(args.model) / "erasure_defaults.json"
    defaults = json.loads(defaults_file.read_text()) if defaults_file.is_file() else generation_defaults("mini-sd")
    classifier = load_world_classifier()
    overrides = dict(parse_override(item) for item in args.overrides)
    config = erasure.resolve_config("esd", "object", args.config, **overrides)
    started = time.perf_counter()
    edited = erasure.erase(pipe, "esd", args.shape, "object", config)
    seconds = time.perf_counter() - started

    prompts = evaluation_prompts(args.shape)
    base = shape_accuracy(pipe, classifier, prompts, args.seeds, defaults)
    edited.apply(pipe)
    after = shape_accuracy(pipe, classifier, prompts, args.seeds, defaults)
    others = [s for s in SHAPES if s != args.shape]
    result = {
        "shape": args.shape,
        "model": args.model,
        "generation": defaults,
        "config": edited.config,
        "erase_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "images_per_shape": 6 * args.seeds,
        "base": base,
        "erased": after,
        "erased_accuracy": after[args.shape],
        "others_min_ratio": min(after[s] / base[s] for s in others if base[s] > 0),
        "final_loss": edited.extra["final_loss"],
    }
    print(f"ESD erase of {args.shape!r}: {seconds:.0f} s on {torch.get_num_threads()} CPU thread(s)")
    print(f"{'prompt':<18}{'base':>7}{'erased':>8}")
    for label in prompts:
        print(f"{label:<18}{base[label]:>7.0%}{after[label]:>8.0%}")
    print(f"erased shape {after[args.shape]:.0%} (target <= 20%); other shapes keep at least "
          f"{result['others_min_ratio']:.0%} of their base accuracy (target >= 80%)")
    if args.output:
        args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
