"""Time the closed-form methods' edit itself (UCE, RECE per epoch) at real scale.

Loading is excluded; the timer covers text encoding, Gram accumulation and the solve,
with the device synchronised. Random weights in the real architecture time the same.

    python scripts/bench_closed_form.py --architecture sd1.4 --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sd_architectures import ARCHITECTURES, random_pipeline

import erasure


def timed(device: str, fn, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn``, the device synchronised around each.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        fn: what to time.
        repeats: how many calls.
    """
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def measure(pipe, concepts: list[str], device: str, repeats: int, epochs: int = 3) -> dict:
    """UCE's edit seconds (after a warm-up), and RECE's seconds per epoch: the difference
    between runs of ``epochs`` epochs and of one, without RECE's validation.

    Args:
        pipe: the pipeline, on ``device``, in the dtype to time.
        concepts: erased together.
        device: ``"cpu"`` or ``"cuda"``.
        repeats: timed runs of each.
        epochs: RECE epochs of the longer run (at least 2).
    """
    erasure.erase(pipe, "uce", concepts)  # warm-up
    uce = timed(device, lambda: erasure.erase(pipe, "uce", concepts), repeats)
    rece = {n: timed(device, lambda: erasure.erase(pipe, "rece", concepts, epochs=n, validate="none"), repeats)
            for n in (1, epochs)}
    return {"uce_seconds": uce, "rece_seconds": {str(n): times for n, times in rece.items()},
            "rece_seconds_per_epoch": (min(rece[epochs]) - min(rece[1])) / (epochs - 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="sd1.4", choices=ARCHITECTURES)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--concepts", type=int, default=1, help="number of concepts erased at once")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    pipe = random_pipeline(args.architecture, args.device, getattr(torch, args.dtype))
    concepts = [f"concept number {i}" for i in range(args.concepts)]
    results = {"architecture": args.architecture, "device": args.device, "dtype": args.dtype,
               "concepts": args.concepts, "torch": torch.__version__}
    if args.device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name()
    results.update(measure(pipe, concepts, args.device, args.repeats))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
