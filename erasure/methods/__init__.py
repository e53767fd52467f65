"""The method registry: one module per method, each exposing a config dataclass and
``erase(pipe, concepts, config) -> EditedWeights``. Names here are the CLI's
``--method`` choices, the ``configs/<name>/`` folders and the ``method`` metadata field."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import ErasureError
from . import esd, mace, rece, uce


@dataclass(frozen=True)
class Method:
    """A registered method.

    Attributes:
        name: registry name.
        config_class: its typed config dataclass (paper defaults).
        erase: ``erase(pipe, concepts, config) -> EditedWeights``; leaves ``pipe`` unchanged.
        trains: whether it fine-tunes by gradient descent (then weights load in float32).
    """

    name: str
    config_class: type
    erase: Callable
    trains: bool

    def run(self, pipe, concepts, config):
        """``erase`` with its cost recorded in the weights' ``extra``: ``erase_seconds``
        (loading excluded), ``peak_rss_mb`` (the process's peak resident memory so far,
        loading included) and, on a GPU, ``peak_gpu_mb`` (the peak allocation while erasing)."""
        on_gpu = pipe.unet.device.type == "cuda"
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(pipe.unet.device)
        started = time.perf_counter()
        edited = self.erase(pipe, concepts, config)
        cost = {"erase_seconds": round(time.perf_counter() - started, 3), "device": str(pipe.unet.device),
                "peak_rss_mb": peak_rss_mb()}
        if on_gpu:
            cost["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(pipe.unet.device) / 2**20)
        return dataclasses.replace(edited, extra={**edited.extra, **cost})


def peak_rss_mb() -> int:
    """This process's peak resident memory in MiB. Linux's ``VmHWM`` first: unlike
    ``getrusage``'s ``ru_maxrss`` it does not carry over the parent's memory through
    fork and exec, so a child process started by a large one reports its own peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / 2**20 if sys.platform == "darwin" else peak / 1024)


METHODS: dict[str, Method] = {
    "uce": Method("uce", uce.UCEConfig, uce.erase, trains=False),
    "esd": Method("esd", esd.ESDConfig, esd.erase, trains=True),
    "mace": Method("mace", mace.MACEConfig, mace.erase, trains=True),
    "rece": Method("rece", rece.RECEConfig, rece.erase, trains=False),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ErasureError(f"unknown method {name!r}: use one of {', '.join(sorted(METHODS))}")
    return METHODS[name]
