"""The method registry: one module (or package) per method, each exposing a config
dataclass and ``erase(pipe, concepts, config, run) -> Edit``. Names here are the CLI's
``--method`` choices, the ``configs/<name>/`` folders and the ``method`` metadata field.

The registry is where a method's edit becomes ``EditedWeights``: provenance (method,
concepts, config, base model) and costs are recorded here, once. It is also where
methods get what they must not import themselves: RECE's validation scorer comes from
the evaluator, built here on first use.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..concepts import Concept
from ..edit import Edit
from ..errors import ErasureError
from ..training import RunOptions
from ..weights import EditedWeights
from . import advunlearn, esd, mace, rece, uce


@dataclass(frozen=True)
class Method:
    """A registered method.

    Attributes:
        name: registry name.
        config_class: its typed config dataclass (paper defaults).
        erase: ``erase(pipe, concepts, config, run) -> Edit``; leaves ``pipe`` unchanged.
        trains: whether it fine-tunes by gradient descent (then weights load in float32,
            and ``RunOptions`` checkpoint and resume it).
    """

    name: str
    config_class: type
    erase: Callable
    trains: bool

    def run(self, pipe, concepts: list[Concept], config, run: RunOptions | None = None) -> EditedWeights:
        """Erase, and return the weights with their provenance and costs.

        Args:
            pipe: a pipeline from ``load_pipeline``; left unchanged.
            concepts: parsed concepts.
            config: an instance of ``config_class``.
            run: checkpoints, resume, overwrite, memory (training methods); default: ``RunOptions()``.

        Returns:
            ``EditedWeights`` whose ``extra`` holds the method's results and the costs:
            ``erase_seconds`` (loading excluded), ``peak_rss_mb`` (the process's peak
            resident memory so far, loading included) and, on a GPU, ``peak_gpu_mb``
            (the peak allocation while erasing).
        """
        if not isinstance(config, self.config_class):
            raise ErasureError(f"{self.name} takes a {self.config_class.__name__}, not a {type(config).__name__}")
        on_gpu = pipe.unet.device.type == "cuda"
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(pipe.unet.device)
        started = time.perf_counter()
        edit = self.erase(pipe, concepts, config, run or RunOptions())
        cost = {"erase_seconds": round(time.perf_counter() - started, 3), "device": str(pipe.unet.device),
                "peak_rss_mb": peak_rss_mb()}
        if on_gpu:
            cost["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(pipe.unet.device) / 2**20)
        return self.weights(edit, pipe, concepts, config, cost)

    def weights(self, edit: Edit, pipe, concepts: list[Concept], config, cost: dict) -> EditedWeights:
        """``EditedWeights`` of an edit (any of ``weights.COMPONENTS``), with this method's provenance."""
        return EditedWeights.from_edit(
            edit.original,
            edit.new,
            method=self.name,
            concepts=[str(c) for c in concepts],
            config=dataclasses.asdict(config),
            base_model=str(pipe.name_or_path),
            extra={**edit.extra, **cost},
        )


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


def validated_rece(pipe, concepts: list[Concept], config: rece.RECEConfig, run: RunOptions) -> Edit:
    """RECE with its epochs scored by the evaluator's erased-concept scorer (and, for
    ``epoch_choice: beats_uce_keeps_others``, the same scorer on ``validation_others``
    but the erased concepts)."""
    scorer = others = None
    if config.validate != "none":
        from ..eval.validation import erased_concept_scorer

        scorer = erased_concept_scorer(pipe, [c.text for c in concepts], config.validate, config.validation_seeds,
                                       config.validation_prompts)
        if config.epoch_choice == "beats_uce_keeps_others":
            erased = {c.text.strip().lower() for c in concepts}
            kept = [o for o in config.validation_others if o.strip().lower() not in erased]
            if not kept:
                raise ErasureError("every concept of validation_others is erased: list concepts that must stay")
            others = erased_concept_scorer(pipe, kept, config.validate, config.validation_seeds, config.validation_prompts)
    return rece.erase(pipe, concepts, config, run, scorer=scorer, others_scorer=others)


METHODS: dict[str, Method] = {
    "uce": Method("uce", uce.UCEConfig, uce.erase, trains=False),
    "esd": Method("esd", esd.ESDConfig, esd.erase, trains=True),
    "mace": Method("mace", mace.MACEConfig, mace.erase, trains=True),
    "rece": Method("rece", rece.RECEConfig, validated_rece, trains=False),
    "advunlearn": Method("advunlearn", advunlearn.AdvUnlearnConfig, advunlearn.erase, trains=True),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ErasureError(f"unknown method {name!r}: use one of {', '.join(sorted(METHODS))}")
    return METHODS[name]
