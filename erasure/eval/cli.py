"""``erase-eval``: generate, score and compare the base and the erased model.

    erase-eval --prompts shapes/circle --model mini-sd --weights circle.safetensors \\
        --metrics world,clip --output runs/eval-circle
    accelerate launch -m erasure.eval --prompts i2p --model CompVis/stable-diffusion-v1-4 \\
        --weights nudity.safetensors --metrics nudenet --output runs/eval-nudity
    erase-eval --prompts shapes/circle --weights circle.safetensors --attack closed-form,unlearndiffatk
    erase-eval --prompts shapes/circle --base-only --attack ring-a-bell    # the base model attacked (sanity)
    erase-eval --prompts shapes/circle --weights circle.safetensors --attack concept-inversion --attack-restarts 5

Errors the user can fix are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from ..config import parse_override
from ..errors import ArgumentParser, ErasureError


def build_parser() -> argparse.ArgumentParser:
    from ..attacks import ATTACKS
    from .metrics import METRICS

    parser = ArgumentParser(
        prog="erase-eval",
        description="Generate images for a prompt set from the base and the erased model, score them, and write "
        "report.json, report.md and report.html side by side.",
    )
    parser.add_argument("--prompts", help="CSV file, bundled set (see --list-prompts), 'i2p', or hf://datasets/OWNER/REPO/FILE.csv")
    parser.add_argument("--model", default="mini-sd", help="base model: mini-sd, a Hub id, a folder or a .safetensors file (default: mini-sd)")
    parser.add_argument("--weights", help="erased weights (.safetensors written by erase)")
    parser.add_argument("--base-only", action="store_true", help="evaluate the base model alone (no --weights)")
    parser.add_argument("--metrics", help=f"comma-separated, from: {', '.join(METRICS)} (default: world,clip for mini-sd, "
                        "else clip, plus clip-accuracy when rows have a class)")
    parser.add_argument("--output", help="output folder (default: outputs/eval/<set>-<model>-<weights>); rerun to resume")
    parser.add_argument("--limit", type=int, help="use only the first N rows")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per pipeline call (default 8)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's erasure_defaults.json, else 50)")
    parser.add_argument("--guidance", type=float, help="guidance for rows without evaluation_guidance, 0 for none "
                        "(default: the model's, else the pipeline's: 7.5, SDXL 5.0)")
    parser.add_argument("--resolution", type=int, help="image side in pixels (default: the model's)")
    parser.add_argument("--device", help="cuda, cpu, ... (default: the GPU if there is one)")
    parser.add_argument("--dtype", help="float32, float16, bfloat16 or auto (default: fp16 on GPU, fp32 on CPU)")
    parser.add_argument("--set", dest="options", action="append", default=[], metavar="METRIC.KEY=VALUE",
                        help="a metric option, e.g. --set clip.model=ViT-B-32/openai --set nudenet.threshold=0.45, or "
                        "an attack's, e.g. --set attack.unlearndiffatk.k=5")
    parser.add_argument("--overwrite", action="store_true", help="regenerate images that already exist")
    parser.add_argument("--attack", metavar="NAME[,NAME...]",
                        help=f"attack every erased and synonym row with each of: {', '.join(ATTACKS)}; adds an "
                        "attacked-<name> column, <output>/attacks/<name>.csv (prompts found) or .safetensors, and "
                        "pre/post-attack ASR. With --base-only the model is attacked as its own base")
    parser.add_argument("--attack-budget", type=float, default=1.0,
                        help="multiply every attack's main loop (timesteps, generations, steps) by this (> 0, default 1)")
    parser.add_argument("--attack-limit", type=int, help="attack only the first N erased and the first N synonym rows")
    parser.add_argument("--attack-restarts", type=int, default=1, metavar="K",
                        help="run each seeded attack K times, with seeds seed..seed+K-1 (an attacker who tries again): "
                        "an attacked-<name>-restart<i> column per extra run, and each run's ASR and the share of rows "
                        "any run breaks in the report (default 1)")
    parser.add_argument("--attack-cache", help="folder of the attacks' result caches (default <output>/attacks); runs on "
                        "one base model may share one")
    parser.add_argument("--no-check-base", action="store_true",
                        help="apply --weights even if the model is not the base they were made for")
    parser.add_argument("--no-html", action="store_true", help="skip report.html")
    parser.add_argument("--list-prompts", action="store_true", help="list the bundled prompt sets and exit")
    return parser


def split_options(items: list[str]) -> tuple[dict[str, dict], dict[str, dict]]:
    """``--set`` values as (metric options, attack options):
    ``["clip.model=ViT-B-32/openai", "attack.unlearndiffatk.k=5"]`` ->
    ``({"clip": {"model": ...}}, {"unlearndiffatk": {"k": 5}})``."""
    options: dict[str, dict] = {}
    attacks: dict[str, dict] = {}
    for item in items:
        key, value = parse_override(item)
        metric, dot, field = key.partition(".")
        if metric == "attack":
            name, dot, field = field.partition(".")
            if not dot or not name or not field:
                raise ErasureError(f"--set {item!r}: write attack.NAME.KEY=VALUE, e.g. --set attack.unlearndiffatk.k=5")
            attacks.setdefault(name, {})[field] = value
            continue
        if not dot or not metric or not field:
            raise ErasureError(f"--set {item!r}: write METRIC.KEY=VALUE, e.g. --set nudenet.threshold=0.5")
        options.setdefault(metric, {})[field] = value
    return options, attacks


def run(args: argparse.Namespace) -> int:
    from . import evaluate
    from .metrics import parse_metric_names
    from .prompts import list_bundled_sets

    if args.list_prompts:
        print("\n".join(list_bundled_sets()))
        return 0
    if not args.prompts:
        raise ErasureError("--prompts is required: a CSV file or a bundled set such as shapes/circle (see --list-prompts)")
    if args.weights and args.base_only:
        raise ErasureError("--weights and --base-only contradict each other: give one")
    if not args.weights and not args.base_only:
        raise ErasureError("no --weights given: pass the erased weights, or --base-only to evaluate the base model alone")
    metrics_set, attacks_set = split_options(args.options)
    report = evaluate(
        args.model,
        args.weights,
        args.prompts,
        parse_metric_names(args.metrics) if args.metrics is not None else None,
        args.output,
        limit=args.limit,
        batch_size=args.batch_size,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        resolution=args.resolution,
        device=args.device,
        dtype=args.dtype,
        metric_options=metrics_set,
        overwrite=args.overwrite,
        html=not args.no_html,
        attack=args.attack,
        attack_options=attacks_set,
        attack_budget=args.attack_budget,
        attack_cache=args.attack_cache,
        attack_limit=args.attack_limit,
        attack_restarts=args.attack_restarts,
        check_base=not args.no_check_base,
    )
    if report is not None:
        print(report.markdown.split("## Settings")[0].rstrip())
        print(f"\nwritten: {', '.join(str(p) for p in report.files.values())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from ..cli import quiet_libraries

    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        return run(args)
    except ErasureError as error:
        print(f"erase-eval: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
