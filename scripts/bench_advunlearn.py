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
  resident size on a CPU;
- with ``--count-flops``, in place of the timings (the counter slows every operation):
  floating-point operations (``torch.utils.flop_counter``) of one iteration of each kind
  and of a guided DDIM step, the whole run's and the authors' schedule's, and the least
  time each can take on one H100 at its datasheet peak. The counts are the same on any
  device, so a CPU gives the GPU floor:

    python scripts/bench_advunlearn.py --model sd1.4 --device cpu --count-flops
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from contextlib import contextmanager, nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_backward_flop_count, \
    sdpa_flop_count
from sd_architectures import ARCHITECTURES, benchmark_pipeline

from erasure.adapters import adapter_for
from erasure.concepts import Concept
from erasure.methods import advunlearn, esd
from erasure.training import RunOptions

PRECISIONS = {"fp32": "no", "bf16": "bf16"}
MEAN_SAMPLING_STEPS = 26.48  # the authors' sampler runs 51 - t_enc steps (50 for t_enc 0), t_enc ~ U{0..49}
AUTHORS_POST_WARMUP_FRESH = 31  # fresh x_t at batch 1 per post-warm-up iteration (30 attack steps + outer)
# One H100 SXM5's dense peak (NVIDIA's datasheet, TFLOPS): a run's FLOPs over it is the least time it can take.
H100_PEAK_TFLOPS = {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}
ONE_HOUR = 3600.0

_aten = torch.ops.aten
# torch counts the GPU attention kernels, not the CPU one: without these, attention (a large
# share of the UNet at 64x64 latents) would count as nothing on a CPU.
if _aten._scaled_dot_product_flash_attention_for_cpu.default not in flop_registry:
    @register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu)
    def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _cpu_attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                      **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


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


def flop_counter(enabled: bool):
    return FlopCounterMode(display=False) if enabled else nullcontext()


@contextmanager
def timed_iterations(device: str, records: list[dict], count_flops: bool = False):
    """Per ``Loop.step``: wall time, inner/outer split, call counts and, if asked, FLOPs."""
    real = advunlearn.Loop.step

    def step(self, index):
        seconds = self.state.extra["seconds"]
        inner, outer = seconds["inner_attack"], seconds["outer"]
        with counted_calls(self.adapter.pipe) as counts, flop_counter(count_flops) as flops:
            synchronize(device)
            start = time.perf_counter()
            loss = real(self, index)
            synchronize(device)
        if count_flops:
            counts["flops"] = flops.get_total_flops()
        records.append({"index": index, "seconds": time.perf_counter() - start,
                        "inner": seconds["inner_attack"] - inner, "outer": seconds["outer"] - outer, **counts})
        return loss

    advunlearn.Loop.step = step
    try:
        yield
    finally:
        advunlearn.Loop.step = real


def guided_steps(pipe, config, batch: int):
    """A function running ``n`` guided DDIM steps at ``batch`` (CFG doubles it), as the authors' sampler runs."""
    adapter = adapter_for(pipe)
    scheduler = adapter.ddim_scheduler(config.ddim_steps)
    cond, empty = adapter.encode(["a concept"] * batch), adapter.encode([""])
    noise = torch.randn(batch, *adapter.latent_shape, device=adapter.device)

    def run(steps: int) -> None:
        with torch.no_grad(), esd.autocast(adapter, config):
            esd.sample_until(adapter, scheduler, noise, steps, cond, empty, config.start_guidance)
    return run


def guided_step_seconds(pipe, config, batch: int, device: str, repeats: int = 4) -> float:
    """Seconds of one guided DDIM step at ``batch``."""
    run = guided_steps(pipe, config, batch)
    run(1)
    synchronize(device)
    start = time.perf_counter()
    run(repeats)
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


def guided_step_flops(pipe, config) -> int:
    """FLOPs of one guided DDIM step at batch 1 (two sample-forwards: CFG)."""
    run = guided_steps(pipe, config, 1)
    with FlopCounterMode(display=False) as flops:
        run(1)
    return flops.get_total_flops()


def authors_schedule(config, warm_up: float, post: float, step_b1: float, step_b5: float, single: float) -> float:
    """The authors' cost of the whole run (seconds or FLOPs), from ours per iteration and
    their sampling's: per warm-up iteration one fresh x_t at batch 1 and one at batch 5
    and two single predictions; per later iteration 31 at batch 1, one at batch 5 and two
    single predictions per attack step and outer step (module docstring)."""
    authors_warm = warm_up + MEAN_SAMPLING_STEPS * (step_b1 + step_b5) + 2 * single
    authors_post = post + MEAN_SAMPLING_STEPS * (AUTHORS_POST_WARMUP_FRESH * step_b1 + step_b5) \
        + 2 * (config.attack_steps + 1) * single
    return config.warmup * authors_warm + (config.iterations - config.warmup) * authors_post


def sig(value: float) -> float:
    return float(f"{value:.4g}")


def count_flops(pipe, config: advunlearn.AdvUnlearnConfig, device: str) -> dict:
    """FLOPs of one iteration of each kind (counted on a small bank of 2-step trajectories:
    an iteration's work does not depend on the bank), of one guided DDIM step, and from
    them the whole run's (its bank counted as guided steps) and the authors' schedule's,
    with the least seconds each takes on one H100 at its datasheet peak."""
    retain = len(advunlearn.retain_prompts([Concept("nudity")], config, str(pipe.name_or_path)))
    counted = dataclasses.replace(config, iterations=2, warmup=1, bank_size=4, retain_limit=8, ddim_steps=2)
    records: list[dict] = []
    with timed_iterations(device, records, count_flops=True):
        advunlearn.erase(pipe, [Concept("nudity")], counted, RunOptions())
    warm_up, post = records[0]["flops"], records[1]["flops"]
    step = guided_step_flops(pipe, config)
    bank = (config.bank_size + retain) * config.ddim_steps * step  # every trajectory: one guided step per DDIM step
    run = bank + config.warmup * warm_up + (config.iterations - config.warmup) * post
    authors = authors_schedule(config, warm_up, post, step, config.retain_batch * step, step / 2)
    floor = {name: {precision: sig(flops / (peak * 1e12)) for precision, peak in H100_PEAK_TFLOPS.items()}
             for name, flops in (("run", run), ("authors", authors))}
    return {
        "attack_steps": config.attack_steps, "ddim_steps": config.ddim_steps,
        "bank": {"concept": config.bank_size, "retain": retain},
        "tflop": {"warm_up_iteration": sig(warm_up / 1e12), "post_warm_up_iteration": sig(post / 1e12),
                  "guided_ddim_step_batch_1": sig(step / 1e12), "bank": sig(bank / 1e12),
                  "run": sig(run / 1e12), "authors_schedule": sig(authors / 1e12)},
        "h100_floor_seconds": floor,
        "h100_share_of_peak_for_one_hour": {precision: sig(run / (peak * 1e12 * ONE_HOUR))
                                            for precision, peak in H100_PEAK_TFLOPS.items()},
    }


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
    projected = bank_seconds + config.warmup * warm_s + (config.iterations - config.warmup) * post_s

    step_b1 = guided_step_seconds(pipe, config, 1, device)
    step_b5 = guided_step_seconds(pipe, config, config.retain_batch, device)
    single = single_prediction_seconds(pipe, config, device)
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
        "authors_schedule_estimate_seconds": round(authors_schedule(config, warm_s, post_s, step_b1, step_b5, single), 1),
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
    parser.add_argument("--count-flops", action="store_true",
                        help="count FLOPs (torch.utils.flop_counter) and give the H100 floor, in place of timing")
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
        if args.count_flops:  # the same count at every precision: once is enough
            print(json.dumps(count_flops(pipe, config, args.device)), flush=True)
            break
        print(json.dumps(bench(pipe, config, args.device, args.warm, args.timed, args.gradient_checkpointing)),
              flush=True)


if __name__ == "__main__":
    main()
