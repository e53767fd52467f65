"""Helpers shared by the scripts that train the bundled world models."""

from __future__ import annotations

import json
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch

from erasure.training import CHECKPOINT_INDEX, Checkpoint, RunOptions

REPO = Path(__file__).resolve().parent.parent
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


def resumable_checkpoint(folder: Path, identity: dict, label: str) -> Checkpoint:
    """The training run's checkpoint in ``folder`` (``erasure.training``'s format): a
    rerun continues it, and is refused if ``identity`` (the settings that change what is
    trained) differs from the checkpoint's; the step count may grow (a longer run).

    Args:
        folder: the checkpoint folder (under ``--run-dir``).
        identity: the run's settings, as JSON values.
        label: the run's name on the progress bar.
    """
    resume = (folder / CHECKPOINT_INDEX).is_file()
    return Checkpoint.open(RunOptions(checkpoint_dir=folder, resume=resume), identity, label=label)


def module_tensors(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``modules`` under ``<name>.<key>``, sharing their
    storage: a checkpoint restores into them in place."""
    return {f"{name}.{key}": value for name, module in modules.items() for key, value in module.state_dict().items()}
