"""Helpers shared by the scripts that train the bundled world models."""

from __future__ import annotations

import json
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))
ASSETS = REPO / "erasure" / "assets"
CACHE_DIR = REPO / "runs" / "world-cache"  # rendered datasets, reused between scripts


def setup(seed: int, threads: int) -> None:
    """Seed every generator and cap the CPU threads (the machine is shared)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def write_json(path: Path, data) -> None:
    from erasure.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    from erasure.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}"


class Stopwatch:
    """Wall time since creation, in minutes, for the model cards."""

    def __init__(self):
        self.start = time.time()

    def minutes(self) -> float:
        return (time.time() - self.start) / 60


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Photometric noise a generated image may carry: blur, noise, brightness and
    contrast shifts. Shape, colour and style are unchanged by all of them."""
    n = x.shape[0]
    if torch.rand((), generator=gen) < 0.5:
        sigma = float(torch.empty(()).uniform_(0.3, 1.0, generator=gen))
        r = torch.arange(-2, 3, dtype=torch.float32)
        k1 = torch.exp(-(r**2) / (2 * sigma**2))
        k2 = (k1[:, None] * k1[None, :]) / k1.sum() ** 2
        kernel = k2.expand(3, 1, 5, 5)
        x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate"), kernel, groups=3)
    contrast = torch.empty(n, 1, 1, 1).uniform_(0.85, 1.15, generator=gen)
    bright = torch.empty(n, 1, 1, 1).uniform_(-0.06, 0.06, generator=gen)
    noise = torch.randn(x.shape, generator=gen) * torch.empty(n, 1, 1, 1).uniform_(0, 0.04, generator=gen)
    x = (x - 0.5) * contrast + 0.5 + bright + noise
    flip = torch.rand(n, generator=gen) < 0.5  # every shape is left-right symmetric
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x.clamp(0, 1)


def save_checkpoint(path: Path, modules: dict, opt, gen: torch.Generator, step: int, seconds: float) -> None:
    """Everything needed to resume a run, as safetensors (no pickles): the modules'
    states, AdamW's moments, the batch generator's state, the step and the time spent."""
    from safetensors.torch import save_file

    from erasure.atomic import atomic_path

    tensors = {f"{name}.{k}": v.contiguous() for name, m in modules.items() for k, v in m.state_dict().items()}
    params = [p for m in modules.values() for p in m.parameters()]
    for i, p in enumerate(params):
        for key in ("exp_avg", "exp_avg_sq"):
            if key in opt.state.get(p, {}):
                tensors[f"opt.{i}.{key}"] = opt.state[p][key].contiguous()
    tensors["rng"] = gen.get_state()
    steps = [float(opt.state[p]["step"]) if p in opt.state else 0.0 for p in params]
    meta = {"step": str(step), "train_seconds": f"{seconds:.1f}", "opt_step": json.dumps(steps)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_checkpoint(path: Path, modules: dict, opt, gen: torch.Generator) -> tuple[int, float]:
    """Restore what ``save_checkpoint`` wrote; returns (step, seconds trained so far)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    for name, m in modules.items():
        m.load_state_dict({k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(name + ".")})
    params = [p for m in modules.values() for p in m.parameters()]
    for i, (p, step) in enumerate(zip(params, json.loads(meta["opt_step"]))):
        if f"opt.{i}.exp_avg" in tensors:
            opt.state[p] = {"step": torch.tensor(step), "exp_avg": tensors[f"opt.{i}.exp_avg"], "exp_avg_sq": tensors[f"opt.{i}.exp_avg_sq"]}
    gen.set_state(tensors["rng"])
    return int(meta["step"]), float(meta["train_seconds"])
