"""What every training run shares, written once: ESD, MACE's stage 2, the scripts that
train the bundled models (and AdvUnlearn next) use it.

- ``swapped_parameters``: other values in a module's parameters for the duration of a
  block (pointer swaps, no copies), the originals back afterwards.
- ``trainable_parameters``: gradients for a chosen subset only, optional gradient
  checkpointing; ``training_flags_restored`` puts every flag back, whatever the block
  (or a library such as PEFT) changed.
- ``RunOptions``: how a run is carried out (checkpoints, resume, overwrite, memory),
  never what it computes.
- ``Checkpoint`` and ``TrainingState``: the one resumable format. A run's checkpoint
  folder is its own; a folder holding another run's checkpoint is refused unless the
  run resumes it or overwrites it.
- ``run_steps``: the loop around a step function: progress bar, deferred Ctrl-C,
  a stop on a non-finite loss or gradient, periodic checkpoints. A run interrupted and
  resumed gives bit-identical results to one that ran through.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .atomic import atomic_write
from .errors import ErasureError

logger = logging.getLogger(__name__)

CHECKPOINT_INDEX = "checkpoint.json"
CHECKPOINT_FORMAT = "erasure-checkpoint"
CHECKPOINT_VERSION = 1
DEFAULT_CHECKPOINT_ROOT = Path("erasure-checkpoints")
_STATE_FILES = "state-*.safetensors"
_PROBES_PER_TENSOR = 64


# ---- parameter values in and out ------------------------------------------------------


@contextmanager
def swapped_parameters(module: nn.Module, values: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Within the block the named parameters of ``module`` hold ``values``; the original
    tensors come back on exit, also on error.

    Swapping exchanges the tensors behind the parameters (``param.data``): nothing is
    copied when a value already has the parameter's device and dtype (otherwise it is
    converted once), and the parameter objects stay the same, so optimisers and hooks
    holding them keep working. Values are used, not copied: an in-place change to a
    parameter inside the block (an optimiser step) changes the value given.

    Autocast caches its casts of weights by tensor identity: enter an autocast region
    after the swap and leave it before the swap ends, or one region would reuse the
    other values' casts.

    Args:
        module: e.g. ``pipe.unet``.
        values: new values under the module's parameter names (``named_parameters()``).
    """
    params = dict(module.named_parameters())
    for name, value in values.items():
        if name not in params:
            raise ErasureError(f"{name!r} is not a parameter of this {type(module).__name__}: the values belong to another model")
        if tuple(value.shape) != tuple(params[name].shape):
            raise ErasureError(
                f"{name} has shape {tuple(params[name].shape)} here but {tuple(value.shape)} in the values given: "
                "they belong to another model"
            )
    saved: dict[str, torch.Tensor] = {}
    try:
        for name, value in values.items():
            param = params[name]
            saved[name] = param.data
            param.data = value.detach().to(param.device, param.dtype)
        yield
    finally:
        for name, data in saved.items():
            params[name].data = data


@contextmanager
def training_flags_restored(module: nn.Module) -> Iterator[None]:
    """On exit every parameter's ``requires_grad`` and ``grad``, and the module's gradient
    checkpointing, are as they were on entry, whatever happened inside."""
    params = dict(module.named_parameters())
    flags = {name: p.requires_grad for name, p in params.items()}
    grads = {name: p.grad for name, p in params.items()}
    checkpointing = getattr(module, "is_gradient_checkpointing", None)
    try:
        yield
    finally:
        for name, param in module.named_parameters():
            if name in flags:
                param.requires_grad_(flags[name])
                param.grad = grads[name]
        if checkpointing is not None and module.is_gradient_checkpointing != checkpointing:
            module.enable_gradient_checkpointing() if checkpointing else module.disable_gradient_checkpointing()


@contextmanager
def trainable_parameters(
    module: nn.Module, names: Iterable[str], gradient_checkpointing: bool = False
) -> Iterator[dict[str, nn.Parameter]]:
    """Within the block gradients flow to the named parameters only; every flag is
    restored on exit (``training_flags_restored``).

    Args:
        module: the model being trained.
        names: parameter names of the subset that trains.
        gradient_checkpointing: recompute activations in the backward pass (diffusers
            models): less memory, same result.

    Yields:
        The chosen parameters by name, in the order of ``names``.
    """
    names = list(names)
    with training_flags_restored(module):
        params = dict(module.named_parameters())
        chosen = set(names)
        for name, param in params.items():
            param.requires_grad_(name in chosen)
        if gradient_checkpointing and not module.is_gradient_checkpointing:
            module.enable_gradient_checkpointing()
        yield {name: params[name] for name in names}


# ---- non-finite values -----------------------------------------------------------------


class NonFiniteError(Exception):
    """A NaN or infinite loss or gradient, raised by a step before it changed anything.

    Attributes:
        hint: what probably caused it and which setting to change, in the step's words.
    """

    def __init__(self, what: str, hint: str):
        super().__init__(what)
        self.hint = hint


def finite_value(loss: torch.Tensor, hint: str | Callable[[], str]) -> float:
    """The loss as a float, or ``NonFiniteError`` if it is NaN or infinite.

    Args:
        loss: a scalar tensor.
        hint: the likely cause, or a function that works it out (called only on failure).
    """
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteError(f"loss became {value}", hint() if callable(hint) else hint)
    return value


def check_finite_gradients(params: Iterable[torch.Tensor], hint: str) -> None:
    """Raise ``NonFiniteError`` if any gradient of ``params`` holds a NaN or infinity.

    Args:
        params: the trained parameters, after ``backward()``.
        hint: the likely cause, for the message.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if grads and not bool(torch.stack([g.isfinite().all() for g in grads]).all()):
        raise NonFiniteError("gradient became non-finite", hint)


# ---- run options --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    """How a training run is carried out. Nothing here changes the weights the run
    produces, so none of it belongs to a method's config or to the weights' provenance.
    Settings that do change them stay in the config: ``mixed_precision`` among them,
    since bf16 and fp16 round differently from float32.

    Attributes:
        checkpoint_dir: this run's checkpoint folder. ``None``:
            ``erasure-checkpoints/<method>-<concepts>-<hash of the settings>``; the
            ``erase`` command uses ``<output>.checkpoint/`` next to its output.
        checkpoint_every: write a checkpoint every N steps and at the end; 0: only on
            Ctrl-C and on a non-finite loss.
        resume: continue the checkpoint in the folder (same settings, concepts and base
            model; more steps than it has extend the run).
        overwrite: start afresh even if the folder holds a checkpoint, deleting it. With
            ``resume`` the checkpoint is continued instead (``overwrite`` then only
            concerns the output).
        gradient_checkpointing: recompute activations in the backward pass: less
            memory, same result, slower.
    """

    checkpoint_dir: str | os.PathLike | None = None
    checkpoint_every: int = 0
    resume: bool = False
    overwrite: bool = False
    gradient_checkpointing: bool = False

    def __post_init__(self):
        every = self.checkpoint_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ErasureError(f"checkpoint_every must be 0 (only on Ctrl-C) or a positive number of steps, got {every!r}")


# ---- the checkpoint -------------------------------------------------------------------------


@dataclass
class TrainingState:
    """Everything a run needs to continue exactly where it stopped, as live objects that
    a checkpoint saves and restores in place.

    Attributes:
        tensors: trained values by name (e.g. the tensors behind the trained
            parameters). Restored in place with ``copy_``; names not yet present are
            added (e.g. MACE's LoRAs of the concepts already done).
        optimizer: the optimiser, or ``None``.
        generator: the random stream the steps draw from, or ``None``.
        scaler: fp16's loss scaler, or ``None``.
        history: one JSON value per finished step (its loss...): its length is the progress.
        extra: JSON values carried along (e.g. seconds trained so far).
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: torch.optim.Optimizer | None = None
    generator: torch.Generator | None = None
    scaler: torch.amp.GradScaler | None = None
    history: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def step(self) -> int:
        """Finished steps."""
        return len(self.history)


def base_fingerprint(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Per tensor, a digest of its shape and of values at fixed positions: a resumed run
    must start from the same base values, bit for bit, without hashing whole models."""
    digests = {}
    for name in sorted(tensors):
        flat = tensors[name].detach().flatten()
        positions = torch.linspace(0, flat.numel() - 1, min(flat.numel(), _PROBES_PER_TENSOR)).long()
        digest = hashlib.sha256(str(tuple(tensors[name].shape)).encode())
        digest.update(flat[positions.to(flat.device)].float().cpu().numpy().tobytes())
        digests[name] = digest.hexdigest()[:16]
    return digests


class Checkpoint:
    """A run's resumable state in its own folder.

    ``state-<step>.safetensors`` holds the trained tensors (``tensor/<name>``), the
    optimiser's state tensors (``optimizer/<index>/<key>``) and the random generator's
    state (``generator``). ``checkpoint.json``, written after it and atomically, names
    it and records the step, the run's identity (its settings and concepts), the base
    model's fingerprint, the history, the loss scaler and JSON extras. The next state
    file gets a new name and the old one is deleted only once the index has moved on,
    so a crash at any moment leaves the index pointing at a complete state file.

    Open one with ``Checkpoint.open``, which applies the resume/overwrite rules.
    """

    def __init__(self, folder: str | os.PathLike, identity: dict, base: dict[str, str], label: str):
        """Args:
            folder: the checkpoint folder.
            identity: the run's settings (see ``open``).
            base: ``base_fingerprint`` of the trained tensors' original values.
            label: the run's name in messages.
        """
        self.folder = Path(folder)
        self.identity = json.loads(json.dumps(identity))  # as it reads back from JSON
        self.base = base
        self.label = label
        self.resuming = False
        self.restored = False

    @classmethod
    def open(
        cls,
        run: RunOptions,
        identity: dict,
        base: Mapping[str, torch.Tensor] | None = None,
        label: str = "training",
        name: str = "run",
    ) -> "Checkpoint":
        """The checkpoint of a run, checked before any work is done.

        A folder holding a checkpoint is continued with ``run.resume`` (refused if the
        checkpoint belongs to other settings or another base model), emptied with
        ``run.overwrite``, and otherwise refused with a message naming both.

        Args:
            run: the run options (folder, resume, overwrite).
            identity: what a resumed run must share with the checkpoint: the settings
                that change the result and the concepts (JSON values).
            base: the original values of the trained tensors, or ``None`` when training
                from scratch.
            label: the run's name in messages and the progress bar (``"ESD"``).
            name: the default folder's name before its hash (``"esd-circle"``).
        """
        fingerprint = base_fingerprint(base) if base is not None else {}
        folder = run.checkpoint_dir
        if folder is None:
            digest = hashlib.sha256(json.dumps([identity, fingerprint], sort_keys=True).encode()).hexdigest()[:10]
            folder = DEFAULT_CHECKPOINT_ROOT / f"{name}-{digest}"
        checkpoint = cls(folder, identity, fingerprint, label)
        _check_folder(checkpoint.folder, run)
        if run.resume:
            checkpoint._check_same_run(checkpoint._read_index())
            checkpoint.resuming = True
        elif checkpoint.exists():
            checkpoint.delete()  # run.overwrite, or _check_folder would have refused
        return checkpoint

    def exists(self) -> bool:
        return (self.folder / CHECKPOINT_INDEX).is_file()

    def delete(self) -> None:
        """Remove this checkpoint's files (the index first), and the folder if nothing else is in it."""
        (self.folder / CHECKPOINT_INDEX).unlink(missing_ok=True)
        for path in self.folder.glob(_STATE_FILES):
            path.unlink(missing_ok=True)
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()

    def save(self, state: TrainingState) -> Path:
        """Write ``state`` as the folder's current checkpoint; returns the folder."""
        tensors = {f"tensor/{name}": value.detach().cpu().contiguous() for name, value in state.tensors.items()}
        optimizer_values: dict[str, dict[str, Any]] = {}
        if state.optimizer is not None:
            for index, values in state.optimizer.state_dict()["state"].items():
                for key, value in values.items():
                    if isinstance(value, torch.Tensor):
                        tensors[f"optimizer/{index}/{key}"] = value.detach().cpu().contiguous()
                    else:
                        optimizer_values.setdefault(str(index), {})[key] = value
        if state.generator is not None:
            tensors["generator"] = state.generator.get_state()
        state_file = f"state-{state.step:07d}.safetensors"
        metadata = {"format": CHECKPOINT_FORMAT, "step": str(state.step)}
        atomic_write(self.folder / state_file, lambda tmp: save_file(tensors, tmp, metadata=metadata))
        index = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": state.step,
            "state_file": state_file,
            "identity": self.identity,
            "base_fingerprint": self.base,
            "history": state.history,
            "optimizer": optimizer_values,
            "scaler": state.scaler.state_dict() if state.scaler is not None else {},
            "extra": state.extra,
        }
        atomic_write(self.folder / CHECKPOINT_INDEX, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1)))
        for old in self.folder.glob(_STATE_FILES):
            if old.name != state_file:
                old.unlink(missing_ok=True)
        return self.folder

    @torch.no_grad()
    def restore(self, state: TrainingState) -> None:
        """Fill ``state`` in place from the folder's checkpoint. ``run_steps`` does this
        when resuming; call it first when the setup depends on the step reached."""
        index = self._read_index()
        try:
            stored = load_file(str(self.folder / index["state_file"]))
        except (SafetensorError, OSError) as error:
            raise ErasureError(f"the checkpoint in {self.folder} is unreadable ({error}): --overwrite starts again") from None
        trained = {key[len("tensor/") :]: value for key, value in stored.items() if key.startswith("tensor/")}
        missing = [name for name in state.tensors if name not in trained]
        if missing:
            raise ErasureError(f"the checkpoint in {self.folder} lacks {missing[0]!r}: it is damaged; --overwrite starts again")
        for name, value in trained.items():
            if name in state.tensors:
                state.tensors[name].copy_(value)
            else:
                state.tensors[name] = value
        if state.optimizer is not None:
            self._restore_optimizer(state.optimizer, stored, index["optimizer"])
        if state.generator is not None:
            state.generator.set_state(stored["generator"])
        if state.scaler is not None and index["scaler"]:
            state.scaler.load_state_dict(index["scaler"])
        state.history[:] = index["history"]
        state.extra.update(index["extra"])
        self.restored = True

    @staticmethod
    def _restore_optimizer(optimizer: torch.optim.Optimizer, stored: dict, values: dict) -> None:
        """The saved per-parameter state; the parameter groups (learning rate...) stay as
        constructed, from the same settings."""
        per_parameter: dict[int, dict[str, Any]] = {}
        for key, value in stored.items():
            if key.startswith("optimizer/"):
                index, name = key[len("optimizer/") :].split("/", 1)
                per_parameter.setdefault(int(index), {})[name] = value
        for index, entries in values.items():
            per_parameter.setdefault(int(index), {}).update(entries)
        optimizer.load_state_dict({"state": per_parameter, "param_groups": optimizer.state_dict()["param_groups"]})

    def _read_index(self) -> dict:
        path = self.folder / CHECKPOINT_INDEX
        if not path.is_file():
            raise ErasureError(f"no checkpoint in {self.folder} to resume: run once without --resume (resume=True)")
        try:
            index = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ErasureError(f"{path} is damaged ({error}): --overwrite (overwrite=True) starts again") from None
        if not isinstance(index, dict) or index.get("format") != CHECKPOINT_FORMAT:
            raise ErasureError(f"{path} is not an erasure checkpoint: choose another checkpoint folder")
        if index.get("version") != CHECKPOINT_VERSION:
            raise ErasureError(f"{path} has checkpoint version {index.get('version')}, this erasure reads "
                               f"{CHECKPOINT_VERSION}: --overwrite (overwrite=True) starts again")
        return index

    def _check_same_run(self, index: dict) -> None:
        saved, current = index["identity"], self.identity
        changed = [key for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
        if changed:
            diffs = "; ".join(f"{key}: {_short(saved.get(key))} -> {_short(current.get(key))}" for key in changed)
            raise ErasureError(
                f"the checkpoint in {self.folder} belongs to another run ({diffs}): resume with the same settings, "
                "or --overwrite (overwrite=True) to start again"
            )
        saved_base = index["base_fingerprint"]
        differs = sorted(set(saved_base) ^ set(self.base)) or [n for n in sorted(self.base) if saved_base[n] != self.base[n]]
        if differs:
            raise ErasureError(
                f"the checkpoint in {self.folder} was made from another base model ({differs[0]} differs): load that model"
            )


def check_checkpoint_folder(run: RunOptions) -> None:
    """Refuse, before any work, a run that would start over an earlier run's checkpoint
    (without ``resume`` or ``overwrite``) or resume a checkpoint that is not there. The
    settings are compared with the checkpoint's when the run starts.

    Args:
        run: run options with a ``checkpoint_dir``.
    """
    _check_folder(Path(run.checkpoint_dir), run)


def _check_folder(folder: Path, run: RunOptions) -> None:
    exists = (folder / CHECKPOINT_INDEX).is_file()
    if run.resume and not exists:
        raise ErasureError(f"no checkpoint in {folder} to resume: run once without --resume (resume=True)")
    if not run.resume and exists and not run.overwrite:
        raise ErasureError(
            f"{folder} holds the checkpoint of an earlier run: pass --resume (resume=True) to continue it, "
            "or --overwrite (overwrite=True) to delete it and start again"
        )


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- the loop -------------------------------------------------------------------------------


@contextmanager
def deferred_interrupt(label: str, unit: str = "step") -> Iterator[threading.Event]:
    """Turn the first Ctrl-C into a flag, checked between steps, so that the checkpoint
    written on interrupt is a consistent state; a second Ctrl-C interrupts at once.

    Args:
        label: the run's name in the message.
        unit: what one step is called (``"iteration"``, ``"concept"``).
    """
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def on_interrupt(signum, frame):
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        tqdm.write(f"{label}: finishing this {unit}, then saving a checkpoint (Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def run_steps(
    step: Callable[[int], Any],
    state: TrainingState,
    total: int,
    checkpoint: Checkpoint,
    every: int = 0,
    unit: str = "step",
) -> list:
    """Run (or continue) ``step(index)`` until ``total`` steps are done.

    A resumed checkpoint is restored into ``state`` first (unless the caller already
    did). Each step's return value is
    appended to ``state.history``. A step raising ``NonFiniteError`` (before changing
    anything) stops the run with an ``ErasureError`` naming the likely cause, after
    saving the state before that step. The first Ctrl-C finishes the step, saves a
    checkpoint and raises ``KeyboardInterrupt``.

    Args:
        step: does one step; gets the number of steps done before it.
        state: the run's live state (see ``TrainingState``).
        total: steps the run should have done when it returns.
        checkpoint: from ``Checkpoint.open``.
        every: checkpoint every N steps and at the end; 0: only on Ctrl-C and errors.
        unit: what one step is called in messages (``"iteration"``).

    Returns:
        ``state.history``.
    """
    label = checkpoint.label
    if checkpoint.resuming and not checkpoint.restored:
        checkpoint.restore(state)
    if state.step > total:
        raise ErasureError(
            f"the checkpoint in {checkpoint.folder} is at {unit} {state.step}, past the {total} asked for: "
            "ask for at least as many"
        )
    progress = tqdm(total=total, initial=state.step, desc=label, dynamic_ncols=True)
    with progress, deferred_interrupt(label, unit) as interrupted:
        while state.step < total:
            generator_before = state.generator.get_state() if state.generator is not None else None
            try:
                result = step(state.step)
            except NonFiniteError as error:
                if generator_before is not None:  # the checkpoint is the state before this step
                    state.generator.set_state(generator_before)
                folder = checkpoint.save(state)
                raise ErasureError(
                    f"{label}: {error} at {unit} {state.step + 1}, so training stopped; {error.hint}. The last good "
                    f"state is in {folder} (--overwrite starts again)"
                ) from None
            state.history.append(result)
            progress.update()
            if isinstance(result, float):
                progress.set_postfix(loss=f"{result:.4g}", refresh=False)
            if interrupted.is_set():
                folder = checkpoint.save(state)
                logger.warning("interrupted after %s %d; checkpoint saved to %s (resume with --resume)", unit, state.step, folder)
                raise KeyboardInterrupt
            if every and (state.step % every == 0 or state.step == total):
                checkpoint.save(state)
    return state.history
