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


def _timed(device: str, fn, repeats: int) -> list[float]:
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
    erasure.erase(pipe, "uce", concepts)  # warm-up
    results["uce_seconds"] = _timed(args.device, lambda: erasure.erase(pipe, "uce", concepts), args.repeats)
    epochs = 3
    rece = _timed(args.device, lambda: erasure.erase(pipe, "rece", concepts, epochs=epochs, validate="none"),
                  args.repeats)
    results["rece_seconds_per_epoch"] = [(t - min(results["uce_seconds"])) / epochs for t in rece]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
