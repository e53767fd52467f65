#!/usr/bin/env python
"""Every GPU figure of the README's speed table, in one run and one JSON.

    scripts/gpu_bench.sh                         # GPU: SD 1.4 architecture, random weights
    scripts/gpu_bench.sh --smoke                 # CPU: tiny pipelines, the same code (< 2 min)
    scripts/gpu_bench.sh --only esd generation --output esd-gen.json

The SD 1.4 architecture is built from configs with random weights
(``scripts/sd_architectures.py``; nothing is downloaded, ``HF_HUB_OFFLINE=1``): time and
memory do not depend on the weights' values. Each figure is measured for float32 weights
and for bf16:

- ``esd``: seconds per iteration and peak memory without the trajectory bank and with it
  (x_t from the edited model, and from the frozen model with the targets kept), esd-x and
  esd-u (``scripts/bench_esd.py``); bf16 is autocast over float32 weights, what ESD does;
- ``uce``, ``rece``: the edit's seconds (encoding, Gram sums, solve), RECE per epoch
  (``scripts/bench_closed_form.py``);
- ``mace``: seconds per concept, two concepts at once, with the paper's settings
  (``scripts/bench_mace.py``);
- ``advunlearn``: the x_t bank's seconds, seconds per warm-up and per adversarial
  iteration (inner attack and outer step apart), the projected run at the authors'
  schedule and the estimate with their sampling (``scripts/bench_advunlearn.py``);
- ``generation``: images per second of ``erase-eval``'s generation and of a bare diffusers
  call, same settings and batch (``scripts/bench_generation.py``).

Entries run in that order, all float32 ones first. Each runs in its own ``try``: an error
is recorded in the JSON and the others still run; an entry that would start after
``--budget-minutes`` is skipped with a note. The JSON is rewritten atomically after every
entry, so an interrupted run keeps what it measured. A new figure is one function in
``ENTRIES``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

import bench_closed_form  # noqa: E402
import bench_esd  # noqa: E402
import bench_generation  # noqa: E402
import bench_mace  # noqa: E402
from sd_architectures import random_pipeline  # noqa: E402

import erasure  # noqa: E402
from erasure.atomic import atomic_write  # noqa: E402

PRECISIONS = ("fp32", "bf16")
ESD_VARIANTS = ("esd-x", "esd-u")


@dataclass(frozen=True)
class Sizes:
    """How much each entry runs: the real settings on a GPU, a token amount in ``--smoke``."""

    esd_ddim_steps: int | None  # None: the paper's 50
    esd_bank_steps: int  # iterations of each bank run in bench_esd.measure
    esd_bank_size: int
    closed_form_repeats: int
    mace_concepts: int
    mace_overrides: dict
    generation_images: int
    generation_batch: int
    generation_steps: int | None  # None: the pipeline's own (50)
    advunlearn_iterations: int


GPU_SIZES = Sizes(None, 4, 8, 3, 2, {}, 16, 8, None, 3)
SMOKE_SIZES = Sizes(6, 3, 4, 1, 1, {"images_per_concept": 1, "train_steps": 2, "generation_steps": 2}, 2, 2, 2, 2)


@dataclass
class Bench:
    """What the entries share: the device, the sizes and the pipelines (built once)."""

    device: str
    smoke: bool
    sizes: Sizes
    refresh: dict
    work: Path
    pipelines: dict = field(default_factory=dict)

    def pipeline(self, dtype: torch.dtype = torch.float32):
        """The benchmark's pipeline in ``dtype`` (the float32 one converted once, on first use)."""
        if dtype not in self.pipelines:
            if torch.float32 not in self.pipelines:
                self.pipelines[torch.float32] = build_pipeline(self.smoke, self.device)
            self.pipelines[dtype] = copy.deepcopy(self.pipelines[torch.float32]).to(dtype)
        return self.pipelines[dtype]

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


def build_pipeline(smoke: bool, device: str):
    """The SD 1.4 architecture with random weights, or in ``--smoke`` a tiny SD 1.x pipeline."""
    if smoke:
        from erasure.tiny import build_tiny_pipeline

        return build_tiny_pipeline("sd1").to(device)
    return random_pipeline("sd1.4", device, torch.float32)


def dtype_of(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


# ---- the entries --------------------------------------------------------------------------


def esd_entry(bench: Bench, precision: str) -> dict:
    """ESD without and with the bank; bf16 is autocast over the float32 weights."""
    results = {}
    for variant in ESD_VARIANTS:
        overrides = {"variant": variant, "mixed_precision": "bf16" if precision == "bf16" else "no",
                     "bank_size": bench.sizes.esd_bank_size}
        if bench.sizes.esd_ddim_steps is not None:
            overrides["ddim_steps"] = bench.sizes.esd_ddim_steps
        config = erasure.resolve_config("esd", "object", **overrides)
        results[variant] = bench_esd.measure(bench.pipeline(), config, bench.device, bench.sizes.esd_bank_steps, bench.refresh)
    return results


def closed_form_entry(bench: Bench, precision: str) -> dict:
    """UCE's edit and RECE's epoch, one concept, in the precision's weights."""
    result = bench_closed_form.measure(bench.pipeline(dtype_of(precision)), ["concept number 0"], bench.device,
                                       bench.sizes.closed_form_repeats)
    return {**result, "uce_seconds": min(result["uce_seconds"]), "uce_runs": result["uce_seconds"]}


def mace_entry(bench: Bench, precision: str) -> dict:
    """MACE with the paper's object settings; the preservation cache in a fresh folder."""
    overrides = {**bench.sizes.mace_overrides, "cache_dir": str(bench.work / f"mace-cache-{precision}")}
    return bench_mace.measure(bench.pipeline(dtype_of(precision)), bench.sizes.mace_concepts, bench.device,
                              overrides=overrides)


def advunlearn_entry(bench: Bench, precision: str) -> dict:
    """AdvUnlearn with the authors' schedule (``scripts/bench_advunlearn.py``): the x_t
    bank, seconds per warm-up and per adversarial iteration (inner attack and outer step
    apart), the projected run and the estimate for the authors' sampling."""
    import bench_advunlearn

    from erasure.methods.advunlearn import AdvUnlearnConfig

    sizes = dict(attack_steps=2, ddim_steps=3, bank_size=4, retain_limit=6) if bench.smoke else {}
    config = AdvUnlearnConfig(**sizes, mixed_precision="bf16" if precision == "bf16" else "no")
    return bench_advunlearn.bench(bench.pipeline(), config, bench.device, warm=1, timed=bench.sizes.advunlearn_iterations)


def generation_entry(bench: Bench, precision: str) -> dict:
    """erase-eval's generation against a bare pipeline call: one alternating pair after a warm-up."""
    from erasure.eval.prompts import load_prompt_set
    from erasure.generation import generation_settings

    pipe = bench.pipeline(dtype_of(precision))
    pipe.set_progress_bar_config(disable=True)
    rows = load_prompt_set(bench_generation.PROMPTS, limit=bench.sizes.generation_images).rows
    settings = generation_settings(pipe, batch_size=bench.sizes.generation_batch, model=str(pipe.name_or_path),
                                   num_inference_steps=bench.sizes.generation_steps)
    result = bench_generation.measure(pipe, rows, settings, str(pipe.name_or_path), pairs=1)
    return {"settings": settings.record(), "batch_size": settings.batch_size, **result}


# The figures, in the order they run. A new one (e.g. another method) is one entry here.
ENTRIES: dict[str, Callable[[Bench, str], dict]] = {
    "esd": esd_entry,
    "uce-rece": closed_form_entry,
    "mace": mace_entry,
    "advunlearn": advunlearn_entry,
    "generation": generation_entry,
}


# ---- the run ------------------------------------------------------------------------------


def machine(device: str) -> dict:
    info = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "erasure": erasure.__version__, "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    return info


def run_entry(bench: Bench, name: str, precision: str) -> dict:
    """One entry, timed, with its peak GPU memory; an error becomes the entry's result."""
    if bench.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        result = ENTRIES[name](bench, precision)
    except Exception as error:  # noqa: BLE001 - one figure failing must not lose the others
        traceback.print_exc()
        result = {"error": f"{type(error).__name__}: {error}"}
    result["entry_seconds"] = round(time.perf_counter() - start, 2)
    if bench.device.startswith("cuda"):
        result.setdefault("entry_peak_memory_GB", round(torch.cuda.max_memory_allocated() / 1e9, 3))
    return result


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny pipelines on the CPU, token sizes (checks the code)")
    parser.add_argument("--device", help="default: cuda, or cpu with --smoke")
    parser.add_argument("--output", type=Path, help="the JSON (default: gpu-bench.json, smoke-bench.json with --smoke)")
    parser.add_argument("--only", nargs="+", choices=list(ENTRIES), help="run only these entries")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--refresh-edited", type=int, default=10, help="K of the edited bank's seconds per iteration")
    parser.add_argument("--refresh-frozen", type=int, default=50, help="K of the frozen bank's seconds per iteration")
    parser.add_argument("--budget-minutes", type=float, default=7.5, help="entries that would start later are skipped")
    args = parser.parse_args(argv)
    device = args.device or ("cpu" if args.smoke else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no GPU here: run on a GPU machine, or pass --smoke (tiny pipelines on the CPU)")
    output = args.output or Path("smoke-bench.json" if args.smoke else "gpu-bench.json")
    names = args.only or list(ENTRIES)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as work:
        bench = Bench(device, args.smoke, SMOKE_SIZES if args.smoke else GPU_SIZES,
                      {"edited": args.refresh_edited, "frozen": args.refresh_frozen}, Path(work))
        data = {"smoke": args.smoke, "architecture": "tiny sd1" if args.smoke else "sd1.4 (random weights)",
                "machine": machine(device), "sizes": vars(bench.sizes), "results": {p: {} for p in args.precision}}
        for precision in args.precision:
            for name in names:
                elapsed = (time.perf_counter() - started) / 60
                if elapsed > args.budget_minutes:
                    result = {"skipped": f"time budget: {elapsed:.1f} of {args.budget_minutes:g} minutes used"}
                else:
                    print(f"[gpu_bench] {precision} {name} ({elapsed:.1f} min)", flush=True)
                    result = run_entry(bench, name, precision)
                data["results"][precision][name] = result
                data["minutes"] = round((time.perf_counter() - started) / 60, 2)
                write_json(output, data)
    print(f"[gpu_bench] wrote {output} in {data['minutes']} minutes", flush=True)
    return data


if __name__ == "__main__":
    main()
