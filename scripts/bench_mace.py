"""Time and memory of MACE for 1, 10 and 100 concepts, stage by stage.

Each concept count runs in a fresh process, so that its peak memory is its own:
resident memory on the CPU (``VmHWM``), allocated memory on a GPU.

    # CPU, the bundled mini-sd (the paper's settings: 8 images, 50 LoRA steps per concept)
    nice -n 10 python scripts/bench_mace.py --model mini-sd --counts 1 10 100

    # GPU, the SD 1.4 architecture with random weights (scripts/sd_architectures.py)
    python scripts/bench_mace.py --model sd1.4 --device cuda --counts 1 10 100

Expected shape: stage 1 and 3 are a few text-space Gram sums and one solve (their cost
grows with the number of prompts, not with the model), stage 2 is linear in the number
of concepts, and peak memory stays flat.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from sd_architectures import ARCHITECTURES, random_pipeline

# 100 everyday object names (COCO's 80 categories and 20 more): stand-ins for concepts.
NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic-light fire-hydrant stop-sign "
    "parking-meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella "
    "handbag tie suitcase frisbee skis snowboard kite baseball-bat baseball-glove skateboard surfboard "
    "tennis-racket bottle wine-glass cup fork knife spoon bowl banana apple sandwich orange broccoli "
    "carrot hot-dog pizza donut cake chair couch potted-plant bed dining-table toilet tv laptop mouse "
    "remote keyboard cell-phone microwave oven toaster sink refrigerator book clock vase scissors "
    "teddy-bear hair-drier toothbrush castle church lighthouse windmill tractor rocket tank guitar "
    "piano violin drum lamp mirror ladder bucket candle helmet anchor compass"
).split()


def measure(pipe, count: int, device: str, concept_type: str = "object", overrides: dict | None = None) -> dict:
    """One MACE erase of the first ``count`` names: seconds (the device synchronised),
    seconds per stage, and peak memory (GPU allocation, or the process's resident peak).

    Args:
        pipe: the pipeline, on ``device``.
        count: how many concepts are erased at once.
        device: ``"cpu"`` or ``"cuda"``.
        concept_type: MACE's concept type (its templates and settings).
        overrides: MACE config overrides.
    """
    import torch

    import erasure

    concepts = [n.replace("-", " ") for n in NAMES[:count]]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    edited = erasure.erase(pipe, "mace", concepts, concept_type=concept_type, config=overrides or {})
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    total = time.perf_counter() - start
    on_gpu = device.startswith("cuda")
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else edited.extra["peak_rss_mb"]
    return {"concepts": count, "seconds": total, "seconds_per_concept": total / count, "stages": edited.extra["seconds"],
            "threads": torch.get_num_threads(), "peak_memory_mb": peak_mb, "memory": "cuda allocated" if on_gpu else "RSS"}


def run_one(args) -> dict:
    """One erase in this process; returns its timings and peak memory."""
    import torch

    import erasure

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model in ARCHITECTURES:
        pipe = random_pipeline(args.model, device=args.device)
    else:
        pipe = erasure.load_pipeline(args.model, device=args.device, dtype="float32")
    overrides = {"cache_dir": args.cache_dir}
    if args.config:
        overrides.update(erasure.config.read_yaml(args.config))
    for key in ("train_steps", "images_per_concept", "generation_steps"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return measure(pipe, args.count, args.device, args.concept_type, overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini-sd", help="mini-sd, a random architecture (sd1.4, sd2.1, sdxl) or any model erasure loads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--concept-type", default="object")
    parser.add_argument("--config", help="a MACE YAML of overrides (e.g. configs/mace/mini-sd.yaml)")
    parser.add_argument("--train-steps", dest="train_steps", type=int, help="override (default: the paper's 50)")
    parser.add_argument("--images", dest="images_per_concept", type=int, help="override (default: 8)")
    parser.add_argument("--generation-steps", dest="generation_steps", type=int)
    parser.add_argument("--cache-dir", default=None, help="preservation-statistics cache (default: the user's)")
    parser.add_argument("--threads", type=int, help="CPU threads (on a shared machine 1 can be fastest)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)  # internal: one run in this process
    args = parser.parse_args()

    if args.count is not None:
        print(json.dumps(run_one(args)))
        return
    results = []
    for count in args.counts:
        command = [sys.executable, __file__, *sys.argv[1:], "--count", str(count)]
        output = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ).stdout
        result = json.loads(output.strip().splitlines()[-1])
        results.append(result)
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in result["stages"].items())
        print(f"{count:4d} concepts: {result['seconds']:8.1f}s ({result['seconds'] / count:.2f}s per concept; "
              f"{stages}); peak {result['memory']} {result['peak_memory_mb']:.0f} MB", flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"model": args.model, "device": args.device, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
