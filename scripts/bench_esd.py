"""Time ESD and measure its peak memory, on mini-sd or a real architecture (random weights).

    python scripts/bench_esd.py --model mini-sd --device cpu
    python scripts/bench_esd.py --model sd1.4 --device cuda --precision fp32 bf16 --variant esd-x

An ESD iteration costs ``k`` guided DDIM steps to sample ``x_t`` (``k`` uniform in
0..ddim_steps-1, mean (ddim_steps-1)/2) plus one update: the frozen predictions, the
edited forward and backward, and the Adam step. The script times both parts and reports
the expected seconds per iteration, ``update + mean(k) * sampling_step``, and the
estimate for a full run; ``--full N`` also runs N real iterations end to end. Peak
memory: ``torch.cuda.max_memory_allocated`` on a GPU, the growth of the process's peak
resident size on the CPU. Published reference: about 6,000 s and 17.8 GB for one ESD
erasure of SD 1.5 (UnlearnCanvas, two UNets on an A100).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from contextlib import contextmanager

import torch
from sd_architectures import ARCHITECTURES, random_pipeline

import erasure
from erasure.adapters import adapter_for
from erasure.concepts import Concept
from erasure.methods import esd
from erasure.training import RunOptions

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


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


def peak_memory_gb(device: str, rss_before_kb: int) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e9
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kb) / 1e6


def sampling_step_seconds(pipe, config: esd.ESDConfig, device: str, steps: int = 6) -> float:
    """Seconds per guided DDIM step at the training resolution and precision."""
    adapter = adapter_for(pipe)
    scheduler = adapter.ddim_scheduler(config.ddim_steps)
    cond, empty = adapter.encode(["a concept"] * config.batch_size), adapter.encode([""])
    channels, size, _ = adapter.latent_shape
    size = config.latent_size or size
    noise = torch.randn(config.batch_size, channels, size, size, device=adapter.device)
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


def bench(pipe, config: esd.ESDConfig, run: RunOptions, device: str, update_iterations: int, full: int) -> dict:
    concepts = [Concept("a red circle")]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    # ddim_steps=1: x_t is the starting noise, so each iteration is the update alone.
    update_times: list[float] = []
    update_only = dataclasses.replace(config, ddim_steps=1, iterations=update_iterations + 1)
    with timed_steps(device, update_times):
        esd.erase(pipe, concepts, update_only, run)
    update = sum(update_times[1:]) / max(1, len(update_times) - 1)  # the first one warms up
    sample = sampling_step_seconds(pipe, config, device)
    mean_depth = (config.ddim_steps - 1) / 2
    per_iteration = update + mean_depth * sample
    result = {
        "variant": config.variant,
        "precision": config.mixed_precision,
        "gradient_checkpointing": run.gradient_checkpointing,
        "trained_parameters": trained_parameter_count(pipe, config),
        "update_seconds": round(update, 4),
        "sampling_step_seconds": round(sample, 4),
        "expected_seconds_per_iteration": round(per_iteration, 4),
        "estimated_run_seconds": round(per_iteration * config.iterations, 1),
        "iterations": config.iterations,
    }
    if full:
        full_times: list[float] = []
        with timed_steps(device, full_times):
            esd.erase(pipe, concepts, dataclasses.replace(config, iterations=full), run)
        result["full_run_mean_seconds_per_iteration"] = round(sum(full_times) / len(full_times), 4)
    result["peak_memory_GB"] = round(peak_memory_gb(device, rss_before), 3)
    return result


def load(model: str, device: str):
    if model in ARCHITECTURES:
        return random_pipeline(model, device, torch.float32)
    return erasure.load_pipeline(model, device=device, dtype="float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini-sd", help=f"mini-sd, a pipeline folder, or {', '.join(ARCHITECTURES)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=list(PRECISIONS))
    parser.add_argument("--variant", default="esd-x", choices=list(esd.VARIANTS))
    parser.add_argument("--config", help="an ESD config YAML (e.g. configs/esd/fast.yaml); defaults: the paper's")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--update-iterations", type=int, default=5, help="timed update-only iterations")
    parser.add_argument("--full", type=int, default=0, help="also run N real iterations end to end")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = load(args.model, args.device)
    machine = {"model": args.model, "device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.device.startswith("cuda"):
        machine["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(machine))
    for precision in args.precision:
        overrides = dict(erasure.config.parse_override(item) for item in args.overrides)
        overrides.update(variant=args.variant, mixed_precision=PRECISIONS[precision])
        config = erasure.resolve_config("esd", "object", args.config, **overrides)
        run = RunOptions(gradient_checkpointing=args.gradient_checkpointing)
        print(json.dumps(bench(pipe, config, run, args.device, args.update_iterations, args.full)))


if __name__ == "__main__":
    main()
