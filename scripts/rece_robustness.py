#!/usr/bin/env python
"""How much of an erased shape an adversary gets back after UCE alone and after RECE.

    python scripts/rece_robustness.py                       # circle, 4 seeds per prompt, about 2 minutes
    python scripts/rece_robustness.py --concept star --seeds 8

RECE (Gong et al., ECCV 2024) starts from UCE, solves in closed form for the embedding
c' that makes the erased cross-attention reproduce the base model's keys and values for
the concept, and re-edits the model so that c' also maps to the target. On mini-sd this
measures, with the world classifier, the share of images classified as the concept when
each model (base, UCE, RECE) generates from

- the concept's own prompts ("a red circle", ... one per colour);
- c' found against UCE's weights with RECE's ``reg``: the embedding RECE's epoch closes;
- c' solved afresh against the model itself, with RECE's ``reg`` and with the attack's
  default (``erasure.attacks.DEFAULT_REG``): what an adversary who knows the model gets;

and the share of the other shapes' prompts still drawn as their shape. Every model and
input uses the same seeds. Writes ``<output>/rece-robustness.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from erasure.world import SHAPES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concept", default="circle", choices=SHAPES, help="the shape to erase (default: circle)")
    parser.add_argument("--seeds", type=int, default=4, help="images per prompt (default: 4)")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "rece-robustness")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import erasure
    from erasure.attacks import DEFAULT_REG, closed_form_embedding
    from erasure.world import SHAPES, shape_prompts

    base = erasure.load_pipeline("mini-sd", device="cpu", dtype="float32")
    reg = erasure.resolve_config("rece", "object").reg
    weights = {"uce": erasure.erase(base, "uce", args.concept), "rece": erasure.erase(base, "rece", args.concept)}
    models = {"base": base, **{name: edited.apply(erasure.load_pipeline("mini-sd", device="cpu", dtype="float32"))
                               for name, edited in weights.items()}}
    prompts = shape_prompts(args.concept)
    against_uce = closed_form_embedding(base, prompts, erased=weights["uce"], reg=reg)
    rows = {}
    for name, pipe in models.items():
        inputs = {"prompt": encode(pipe, prompts), f"c' against uce (reg {reg:g})": against_uce}
        if name != "base":
            for r in (reg, DEFAULT_REG):
                inputs[f"c' against itself (reg {r:g})"] = closed_form_embedding(
                    base, prompts, erased=weights[name], reg=r)
        rows[name] = {label: share_of(pipe, embedding, args.concept, args.seeds) for label, embedding in inputs.items()}
        others = [shape for shape in SHAPES if shape != args.concept]
        rows[name]["other shapes kept"] = sum(share_of(pipe, encode(pipe, shape_prompts(s)), s, args.seeds)
                                              for s in others) / len(others)
    data = {"concept": args.concept, "seeds_per_prompt": args.seeds, "prompts": prompts, "rece_reg": reg,
            "rece_epoch": weights["rece"].extra.get("chosen_epoch"), "accuracy_percent": rows}
    write(args.output, data)
    return data


def encode(pipe, prompts: list[str]):
    from erasure.adapters import adapter_for

    return adapter_for(pipe).encode(prompts)


def share_of(pipe, embedding, shape: str, seeds: int) -> float:
    """% of the images generated from ``embedding`` (each prompt x ``seeds``) classified as ``shape``."""
    from erasure.attacks import generate_from_embedding
    from erasure.generation import generation_settings
    from erasure.world.classifier import classify

    settings = generation_settings(pipe)
    images = generate_from_embedding(pipe, embedding, list(range(seeds)), num_inference_steps=settings.num_inference_steps,
                                     guidance_scale=settings.guidance_scale, height=settings.resolution,
                                     width=settings.resolution)
    predicted = classify(images).shape
    return 100 * sum(p == shape for p in predicted) / len(predicted)


def write(folder: Path, data: dict) -> None:
    from erasure.atomic import atomic_path

    columns = list(max(data["accuracy_percent"].values(), key=len))  # the erased models' rows have every column
    lines = [f"% of images classified as **{data['concept']}** ({len(data['prompts'])} prompts x "
             f"{data['seeds_per_prompt']} seeds; last column: the other shapes as themselves)", "",
             "| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for model, row in data["accuracy_percent"].items():
        lines.append(f"| {model} | " + " | ".join(f"{row[c]:.1f}" if c in row else "-" for c in columns) + " |")
    folder.mkdir(parents=True, exist_ok=True)
    for path, text in ((folder / "rece-robustness.json", json.dumps(data, indent=2) + "\n"),
                       (folder / "rece-robustness.md", "\n".join(lines) + "\n")):
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
