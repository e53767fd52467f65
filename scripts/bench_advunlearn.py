"""Time AdvUnlearn and measure its peak memory, on the SD 1.4 architecture with random
weights (a GPU), on mini-sd, or on a tiny pipeline (``--smoke``, seconds on a CPU).

    python scripts/bench_advunlearn.py --model sd1.4 --device cuda --precision fp32 bf16
    python scripts/bench_advunlearn.py --model mini-sd --device cpu --attack-steps 5 --ddim-steps 25
    python scripts/bench_advunlearn.py --smoke

What it reports (JSON lines), with the authors' settings unless overridden (1000
iterations, 200 warm-up, 30 attack steps, 50 DDIM steps, retain batch 5):
- ``bank_seconds``: building the x_t bank (``--bank-size`` concept trajectories and
  ``--retain`` retain trajectories, guided DDIM, every latent and frozen prediction kept);
- seconds per warm-up iteration and per post-warm-up iteration (``--warm`` untimed
  first, then ``--timed`` of each kind), split into the inner attack and the outer step;
- ``projected_run_seconds``: bank + warm-up x warm-up iteration + the rest x post-warm-up
  iteration;
- ``authors_schedule_estimate_seconds``: the same iterations with the authors' sampling
  added: per post-warm-up iteration 31 fresh x_t at batch 1 (30 attack steps and the
  outer step) and one at batch 5 (retain), each 26.48 guided DDIM steps on average,
  plus two single frozen predictions per attack step; per warm-up iteration the outer
  step's. Guided DDIM steps are timed here at batch 1 and 5. Published: 21.8 hours for
  SD 1.4 (as measured by others), the figure this estimate is compared with;
- UNet and text-encoder calls and samples per iteration (forward pre-hooks), to set
  next to the authors' counts (design note, "counting steps": per post-warm-up
  iteration 910 no-grad UNet calls = 1,974 sample-forwards and 32 gradient calls of 36
  samples; per warm-up iteration 56 calls = 325 sample-forwards and 2 gradient calls of
  6 samples);
- peak memory: ``torch.cuda.max_memory_allocated`` on a GPU, the growth of the peak
  resident size on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from contextlib import contextmanager

import torch
from sd_architectures import ARCHITECTURES, benchmark_pipeline

from erasure.adapters import adapter_for
from erasure.concepts import Concept
from erasure.methods import advunlearn, esd
from erasure.training import RunOptions

PRECISIONS = {"fp32": "no", "bf16": "bf16"}
MEAN_SAMPLING_STEPS = 26.48  # the authors' sampler runs 51 - t_enc steps (50 for t_enc 0), t_enc ~ U{0..49}
AUTHORS_POST_WARMUP_FRESH = 31  # fresh x_t at batch 1 per post-warm-up iteration (30 attack steps + outer)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def counted_calls(pipe):
    """Count forward calls and samples of the UNet and text encoders, with and without gradient."""
    counts: dict[str, int] = {}

    def hook(name):
        def pre(module, args, kwargs):
            batch = (args[0] if args else next(iter(kwargs.values()))).shape[0]
            kind = "grad" if torch.is_grad_enabled() else "no_grad"
            counts[f"{name}_{kind}_calls"] = counts.get(f"{name}_{kind}_calls", 0) + 1
            counts[f"{name}_{kind}_samples"] = counts.get(f"{name}_{kind}_samples", 0) + batch
        return pre

    handles = [module.register_forward_pre_hook(hook(name), with_kwargs=True)
               for name, module in advunlearn.components(adapter_for(pipe)).items()]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def timed_iterations(device: str, records: list[dict]):
    """Per ``Loop.step``: wall time, inner/outer split and call counts."""
    real = advunlearn.Loop.step

    def step(self, index):
        seconds = self.state.extra["seconds"]
        inner, outer = seconds["inner_attack"], seconds["outer"]
        with counted_calls(self.adapter.pipe) as counts:
            synchronize(device)
            start = time.perf_counter()
            loss = real(self, index)
            synchronize(device)
        records.append({"index": index, "seconds": time.perf_counter() - start,
                        "inner": seconds["inner_attack"] - inner, "outer": seconds["outer"] - outer, **counts})
        return loss

    advunlearn.Loop.step = step
    try:
        yield
    finally:
        advunlearn.Loop.step = real


def guided_step_seconds(pipe, config, batch: int, device: str, repeats: int = 4) -> float:
    """Seconds of one guided DDIM step at ``batch`` (CFG doubles it), as the authors' sampler runs."""
    adapter = adapter_for(pipe)
    scheduler = adapter.ddim_scheduler(config.ddim_steps)
    cond, empty = adapter.encode(["a concept"] * batch), adapter.encode([""])
    noise = torch.randn(batch, *adapter.latent_shape, device=adapter.device)
    with torch.no_grad(), esd.autocast(adapter, config):
        esd.sample_until(adapter, scheduler, noise, 1, cond, empty, config.start_guidance)
        synchronize(device)
        start = time.perf_counter()
        esd.sample_until(adapter, scheduler, noise, repeats, cond, empty, config.start_guidance)
        synchronize(device)
    return (time.perf_counter() - start) / repeats


def single_prediction_seconds(pipe, config, device: str, repeats: int = 4) -> float:
    adapter = adapter_for(pipe)
    cond = adapter.encode(["a concept"])
    latents = torch.randn(1, *adapter.latent_shape, device=adapter.device)
    with torch.no_grad(), esd.autocast(adapter, config):
        adapter.predict_noise(latents, 500, cond)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            adapter.predict_noise(latents, 500, cond)
        synchronize(device)
    return (time.perf_counter() - start) / repeats


def mean_of(records: list[dict], key: str) -> float:
    return sum(r.get(key, 0) for r in records) / max(1, len(records))


def bench(pipe, config: advunlearn.AdvUnlearnConfig, device: str, warm: int, timed: int,
          gradient_checkpointing: bool = False) -> dict:
    """The figures of the module docstring for ``config``: ``warm`` untimed then ``timed``
    timed iterations of each kind (warm-up, adversarial)."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    adapter = adapter_for(pipe)
    scheduler = adapter.ddim_scheduler(config.ddim_steps)
    retain = advunlearn.retain_prompts([Concept("nudity")], config, str(pipe.name_or_path))
    synchronize(device)
    start = time.perf_counter()
    advunlearn.sample_banks(adapter, scheduler, ["nudity"], retain, config)
    synchronize(device)
    bank_seconds = time.perf_counter() - start

    # The timed run: a small bank (its cost is measured above), warm-up then adversarial iterations.
    per_kind = warm + timed
    run_config = dataclasses.replace(config, iterations=2 * per_kind, warmup=per_kind, bank_size=4, retain_limit=8)
    records: list[dict] = []
    with timed_iterations(device, records):
        advunlearn.erase(pipe, [Concept("nudity")], run_config, RunOptions(gradient_checkpointing=gradient_checkpointing))
    warm_up = records[warm:per_kind]
    post = records[per_kind + warm:]
    warm_s, post_s = mean_of(warm_up, "seconds"), mean_of(post, "seconds")
    adversarial = config.iterations - config.warmup
    projected = bank_seconds + config.warmup * warm_s + adversarial * post_s

    step_b1 = guided_step_seconds(pipe, config, 1, device)
    step_b5 = guided_step_seconds(pipe, config, config.retain_batch, device)
    single = single_prediction_seconds(pipe, config, device)
    authors_warm = warm_s + MEAN_SAMPLING_STEPS * (step_b1 + step_b5) + 2 * single
    authors_post = post_s + MEAN_SAMPLING_STEPS * (AUTHORS_POST_WARMUP_FRESH * step_b1 + step_b5) \
        + 2 * (config.attack_steps + 1) * single
    counts = {kind: {key: mean_of(group, key) for key in sorted({k for r in group for k in r if k.endswith(("calls", "samples"))})}
              for kind, group in (("warm_up", warm_up), ("post_warm_up", post))}
    result = {
        "precision": config.mixed_precision, "attack_steps": config.attack_steps, "ddim_steps": config.ddim_steps,
        "bank": {"concept": config.bank_size, "retain": len(retain), "seconds": round(bank_seconds, 2)},
        "warm_up_iteration_seconds": round(warm_s, 4),
        "post_warm_up_iteration_seconds": round(post_s, 4),
        "post_warm_up_inner_attack_seconds": round(mean_of(post, "inner"), 4),
        "post_warm_up_outer_seconds": round(mean_of(post, "outer"), 4),
        "iterations_timed": {"warm_up": len(warm_up), "post_warm_up": len(post)},
        "projected_run_seconds": round(projected, 1),
        "guided_ddim_step_seconds": {"batch_1": round(step_b1, 4), f"batch_{config.retain_batch}": round(step_b5, 4)},
        "authors_schedule_estimate_seconds": round(config.warmup * authors_warm + adversarial * authors_post, 1),
        "calls_per_iteration": counts,
    }
    if device.startswith("cuda"):
        result["peak_memory_GB"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
    else:
        result["peak_rss_growth_GB"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1e6, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sd1.4", help=f"{', '.join(ARCHITECTURES)}, mini-sd or a pipeline folder")
    parser.add_argument("--smoke", action="store_true", help="a tiny pipeline and small settings: a CPU check in seconds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=list(PRECISIONS))
    parser.add_argument("--attack-steps", type=int, default=30)
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--bank-size", type=int, default=256)
    parser.add_argument("--retain", type=int, default=243, help="retain trajectories (authors' set: 243 prompts)")
    parser.add_argument("--warm", type=int, default=3, help="untimed iterations of each kind first")
    parser.add_argument("--timed", type=int, default=10, help="timed iterations of each kind")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        from erasure.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline("sd1").to(args.device)
        args.model, args.attack_steps, args.ddim_steps, args.bank_size, args.retain = "tiny-sd1", 2, 3, 4, 6
        args.warm, args.timed = 1, 2
    else:
        pipe = benchmark_pipeline(args.model, args.device)
    machine = {"model": args.model, "device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.device.startswith("cuda"):
        machine["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(machine), flush=True)
    for precision in args.precision:
        config = advunlearn.AdvUnlearnConfig(attack_steps=args.attack_steps, ddim_steps=args.ddim_steps,
                                             bank_size=args.bank_size, retain_limit=args.retain,
                                             mixed_precision=PRECISIONS[precision])
        print(json.dumps(bench(pipe, config, args.device, args.warm, args.timed, args.gradient_checkpointing)), flush=True)


if __name__ == "__main__":
    main()
