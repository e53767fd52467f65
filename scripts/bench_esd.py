"""Time ESD and measure its peak memory, with and without the trajectory bank, on mini-sd
or a real architecture (random weights; scripts/sd_architectures.py).

    python scripts/bench_esd.py --model mini-sd --device cpu --threads 1
    python scripts/bench_esd.py --model sd1.4 --device cuda --precision fp32 bf16 --variant esd-x esd-u

An ESD iteration costs its ``x_t`` plus one update. Per variant and precision the script
makes three short real runs (every step timed, the device synchronised):

- edited bank (``x_t`` from the model being trained, ``refresh_every`` = the run's
  length): the first step samples the bank (``bank_size`` trajectories, every latent
  kept), the others are the update: the frozen target (one batched call), the edited
  prediction, its backward pass and the Adam step;
- frozen bank (``sample_from=frozen``): the first step samples the bank with the
  target at every latent, the others are the edited prediction, backward and Adam;
- fresh (the paper's ``x_t``, ``refresh_every=1``): two iterations, for peak memory;

and times one guided DDIM step at the training batch. Seconds per iteration:

- fresh: update + (ddim_steps - 1) / 2 guided steps (the mean depth of a fresh ``x_t``);
- edited bank, refreshed every K iterations: update + bank / K;
- frozen bank, every K: update without the target + frozen bank / K.

Peak memory: ``torch.cuda.max_memory_allocated`` per run on a GPU (the resident model
included, and reported separately); not measured on a CPU. Published reference: about
6,000 s and 17.8 GB for one ESD erasure of SD 1.5 (UnlearnCanvas, two UNets on an A100).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from contextlib import contextmanager

import torch
from sd_architectures import ARCHITECTURES, benchmark_pipeline

import erasure
from erasure.adapters import adapter_for
from erasure.concepts import Concept
from erasure.methods import esd
from erasure.training import RunOptions

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
CONCEPTS = [Concept("a red circle")]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def timed_steps(device: str, times: list[float]):
    """Record the wall time of every ``esd.training_step`` call."""
    real = esd.training_step

    def step(*args, **kwargs):
        synchronize(device)
        start = time.perf_counter()
        loss = real(*args, **kwargs)
        synchronize(device)
        times.append(time.perf_counter() - start)
        return loss

    esd.training_step = step
    try:
        yield
    finally:
        esd.training_step = real


def timed_run(pipe, config: esd.ESDConfig, device: str, run: RunOptions) -> dict:
    """One real ESD run: its per-step seconds and, on a GPU, its peak memory."""
    times: list[float] = []
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    resident = torch.cuda.memory_allocated() if device.startswith("cuda") else None
    with timed_steps(device, times):
        esd.erase(pipe, CONCEPTS, config, run)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    return {"times": times, "peak_memory_GB": None if peak is None else round(peak / 1e9, 3),
            "resident_memory_GB": None if resident is None else round(resident / 1e9, 3)}


def guided_step_seconds(pipe, config: esd.ESDConfig, device: str, steps: int = 6) -> float:
    """Seconds per guided DDIM step (a batch of ``batch_size`` with its unconditioned half)."""
    adapter = adapter_for(pipe)
    scheduler = adapter.ddim_scheduler(max(config.ddim_steps, steps))
    cond, empty = adapter.encode(["a concept"] * config.batch_size), adapter.encode([""])
    noise = esd.starting_noise(adapter, config, config.batch_size, torch.Generator().manual_seed(0))
    with torch.no_grad(), esd.autocast(adapter, config):
        esd.sample_until(adapter, scheduler, noise, 1, cond, empty, config.start_guidance)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        esd.sample_until(adapter, scheduler, noise, steps, cond, empty, config.start_guidance)
        synchronize(device)
    return (time.perf_counter() - start) / steps


def trained_parameter_count(pipe, config: esd.ESDConfig) -> int:
    adapter = adapter_for(pipe)
    names = set(esd.trainable_parameter_names(adapter.unet, set(adapter.cross_attention_modules()), config))
    return sum(p.numel() for n, p in adapter.unet.named_parameters() if n in names)


def bank_run(pipe, config: esd.ESDConfig, device: str, run: RunOptions, sample_from: str, steps: int) -> dict:
    """A run of ``steps`` iterations drawing from one bank: the bank's seconds (the first
    step less an update) and the update's (the mean of the others)."""
    result = timed_run(pipe, dataclasses.replace(config, sample_from=sample_from, iterations=steps, refresh_every=steps),
                       device, run)
    update = sum(result["times"][1:]) / (steps - 1)
    return {"bank_seconds": result["times"][0] - update, "update_seconds": update,
            "peak_memory_GB": result["peak_memory_GB"], "resident_memory_GB": result["resident_memory_GB"]}


def measure(
    pipe, config: esd.ESDConfig, device: str, steps: int = 4, refresh: dict | None = None, run: RunOptions = RunOptions()
) -> dict:
    """Seconds per iteration and peak memory of ESD with ``config``, without and with the bank.

    Args:
        pipe: a float32 pipeline on ``device``.
        config: the ESD settings (variant, precision, ``ddim_steps``, ``bank_size``...).
        device: ``"cpu"`` or ``"cuda"``.
        steps: iterations of each bank run (at least 2; the first samples the bank).
        refresh: ``{"edited": K, "frozen": K}`` for the amortised seconds per iteration.
        run: run options (``gradient_checkpointing``).
    """
    refresh = refresh or {"edited": 10, "frozen": 50}
    esd.erase(pipe, CONCEPTS, dataclasses.replace(config, iterations=1, ddim_steps=2, refresh_every=1), run)  # warm-up
    edited = bank_run(pipe, config, device, run, "edited", steps)
    frozen = bank_run(pipe, config, device, run, "frozen", steps)
    fresh = timed_run(pipe, dataclasses.replace(config, iterations=2, refresh_every=1), device, run)
    guided = guided_step_seconds(pipe, config, device)
    mean_depth = (config.ddim_steps - 1) / 2
    per_iteration = {
        "fresh": edited["update_seconds"] + mean_depth * guided,
        f"edited_bank_K{refresh['edited']}": edited["update_seconds"] + edited["bank_seconds"] / refresh["edited"],
        f"frozen_bank_K{refresh['frozen']}": frozen["update_seconds"] + frozen["bank_seconds"] / refresh["frozen"],
    }
    return {
        "variant": config.variant,
        "precision": config.mixed_precision,
        "gradient_checkpointing": run.gradient_checkpointing,
        "trained_parameters": trained_parameter_count(pipe, config),
        "ddim_steps": config.ddim_steps,
        "batch_size": config.batch_size,
        "bank_size": config.bank_size,
        "guided_step_seconds": round(guided, 4),
        "update_seconds": round(edited["update_seconds"], 4),
        "update_without_target_seconds": round(frozen["update_seconds"], 4),
        "edited_bank_seconds": round(edited["bank_seconds"], 3),
        "frozen_bank_seconds": round(frozen["bank_seconds"], 3),
        "seconds_per_iteration": {mode: round(value, 4) for mode, value in per_iteration.items()},
        "speedup_over_fresh": {mode: round(per_iteration["fresh"] / value, 2) for mode, value in per_iteration.items()},
        "peak_memory_GB": {"fresh": fresh["peak_memory_GB"], "edited_bank": edited["peak_memory_GB"],
                           "frozen_bank": frozen["peak_memory_GB"]},
        "resident_memory_GB": fresh["resident_memory_GB"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini-sd", help=f"mini-sd, a pipeline folder, or {', '.join(ARCHITECTURES)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=list(PRECISIONS))
    parser.add_argument("--variant", nargs="+", default=["esd-x"], choices=list(esd.VARIANTS))
    parser.add_argument("--config", help="an ESD config YAML (e.g. configs/esd/mini-sd.yaml); defaults: the paper's")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--steps", type=int, default=4, help="iterations of each bank run (default 4)")
    parser.add_argument("--refresh-edited", type=int, default=10, help="K for the edited bank's amortised figure")
    parser.add_argument("--refresh-frozen", type=int, default=50, help="K for the frozen bank's amortised figure")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = benchmark_pipeline(args.model, args.device)
    machine = {"model": args.model, "device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.device.startswith("cuda"):
        machine["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(machine))
    refresh = {"edited": args.refresh_edited, "frozen": args.refresh_frozen}
    for variant in args.variant:
        for precision in args.precision:
            overrides = dict(erasure.config.parse_override(item) for item in args.overrides)
            overrides.update(variant=variant, mixed_precision=PRECISIONS[precision])
            config = erasure.resolve_config("esd", "object", args.config, **overrides)
            run = RunOptions(gradient_checkpointing=args.gradient_checkpointing)
            print(json.dumps(measure(pipe, config, args.device, args.steps, refresh, run)))


if __name__ == "__main__":
    main()
