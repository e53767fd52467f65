"""The one weight format: a ``.safetensors`` file of the changed UNet tensors.

Keys are diffusers UNet parameter names, so plain
``pipe.unet.load_state_dict(safetensors.torch.load_file(path), strict=False)`` works.
The header metadata records what made the file and which base model it belongs to;
``erasure.apply`` checks that before touching a pipeline.

The base-model fingerprint is a few statistics and sampled values of every original
tensor the file replaces, compared with a tolerance rather than hashed: a base model
loaded in float16 or bfloat16 is the same base model, another checkpoint is not. It
must cover exactly the tensors the file holds: a tensor without one would be applied
unchecked, so a missing, empty or malformed fingerprint is refused unless the caller
asks for no check (``check_base=False``, ``erase-eval --no-check-base``).

NaN or infinite values are never saved, loaded or applied: a diverged edit is an error
naming the settings that produced it, not a model that scores as a perfect erasure.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .atomic import atomic_dir, atomic_write, remove_orphans, reported_write_errors
from .errors import ErasureError

FORMAT_NAME = "erasure"
FORMAT_VERSION = "1"
_PROBE_POINTS = 8
# bfloat16 keeps 8 bits of mantissa: a base model loaded in bf16 must still match.
_PROBE_RTOL, _PROBE_ATOL = 2e-2, 1e-3


def tensor_fingerprint(tensor: torch.Tensor) -> list[float]:
    """Mean, standard deviation and values at fixed positions of one tensor."""
    flat = tensor.detach().flatten().float().cpu()
    positions = torch.linspace(0, flat.numel() - 1, _PROBE_POINTS).long()
    return [flat.mean().item(), flat.std().item(), *flat[positions].tolist()]


def fingerprint(tensors: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    return {name: tensor_fingerprint(tensors[name]) for name in sorted(tensors)}


def _is_tensor_fingerprint(value) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2 + _PROBE_POINTS
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def _suspect_settings(config: dict) -> str:
    """The settings to check when an edit diverged: the non-finite ones if any, else
    every real-valued one (``lam=0, erase_scale=1``)."""
    numbers = {key: value for key, value in config.items() if isinstance(value, float)}
    suspects = {key: value for key, value in numbers.items() if not math.isfinite(value)} or numbers
    return ", ".join(f"{key}={value:g}" for key, value in suspects.items()) or "its settings"


def _versions() -> dict[str, str]:
    from importlib.metadata import version  # not ``import diffusers``: saving needs no seconds of imports

    from . import __version__

    return {
        "erasure": __version__,
        "torch": torch.__version__,
        "diffusers": version("diffusers"),
        "python": platform.python_version(),
    }


@dataclass(frozen=True)
class EditedWeights:
    """The result of an erasure: new values for some UNet tensors, and their provenance.

    Attributes:
        tensors: new values under diffusers UNet parameter names.
        method: registry name of the method that made them (``"uce"``, ``"esd"``...).
        concepts: the erased concepts as given.
        config: the fully resolved method config.
        base_model: the base model's id or path.
        base_fingerprint: ``fingerprint()`` of the original tensors these replace (as
            read from a file: possibly malformed, which ``check_base`` refuses).
        extra: method-specific results (e.g. RECE's chosen epoch), JSON-serialisable.
    """

    tensors: dict[str, torch.Tensor]
    method: str
    concepts: list[str]
    config: dict
    base_model: str
    base_fingerprint: dict[str, list[float]] | None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_edit(cls, original: dict[str, torch.Tensor], new: dict[str, torch.Tensor], **provenance):
        """Build from the original and new values of the same tensors."""
        tensors = {name: value.detach().to("cpu", torch.float32).contiguous() for name, value in new.items()}
        return cls(tensors=tensors, base_fingerprint=fingerprint({name: original[name] for name in new}), **provenance)

    def check_finite(self) -> None:
        """Raise ``ErasureError`` if a tensor holds NaN or infinity, naming the settings to check."""
        for name, value in self.tensors.items():
            if not torch.isfinite(value).all():
                raise ErasureError(
                    f"{self.method} produced NaN or infinite values in {name}: check its settings "
                    f"({_suspect_settings(self.config)}) and erase again"
                )

    def _fingerprint_problem(self) -> str | None:
        """What is wrong with ``base_fingerprint``, or ``None`` if it covers exactly the tensors."""
        prints = self.base_fingerprint
        if not isinstance(prints, dict) or not all(
            isinstance(name, str) and _is_tensor_fingerprint(value) for name, value in prints.items()
        ):
            return "a malformed base fingerprint"
        if not prints:
            return "no base fingerprint"
        unlisted = sorted(set(self.tensors) - set(prints))
        if unlisted:
            return f"no base fingerprint for {unlisted[0]}"
        foreign = sorted(set(prints) - set(self.tensors))
        if foreign:
            return f"a base fingerprint for {foreign[0]}, a tensor they do not hold"
        return None

    # -- applying ----------------------------------------------------------------

    def check_base(self, unet: torch.nn.Module) -> None:
        """Raise ``ErasureError`` unless ``unet`` is the base model these weights were made for.

        Args:
            unet: the UNet the weights are about to be loaded into.
        """
        problem = self._fingerprint_problem()
        if problem is not None:
            raise ErasureError(
                f"these weights have {problem}, so the base model cannot be checked: re-create them with erase, "
                "or apply them unchecked with check_base=False (erase-eval: --no-check-base)"
            )
        params = dict(unet.state_dict())
        missing = [name for name in self.tensors if name not in params]
        if missing:
            raise ErasureError(
                f"these weights edit {missing[0]!r}, which this UNet does not have: they were made for "
                f"{self.base_model!r}; load that model instead"
            )
        for name, value in self.tensors.items():
            if tuple(params[name].shape) != tuple(value.shape):
                raise ErasureError(
                    f"{name} has shape {tuple(value.shape)} in the weights but {tuple(params[name].shape)} in this "
                    f"UNet: they were made for {self.base_model!r}; load that model instead"
                )
        for name, expected in self.base_fingerprint.items():
            actual = torch.tensor(tensor_fingerprint(params[name]))
            if not torch.allclose(actual, torch.tensor(expected), rtol=_PROBE_RTOL, atol=_PROBE_ATOL):
                raise ErasureError(
                    f"this UNet's {name} differs from the base model the weights were made for "
                    f"({self.base_model!r}): load that model, or apply anyway with check_base=False "
                    "(erase-eval: --no-check-base)"
                )

    @torch.no_grad()
    def apply(self, pipe, check_base: bool = True):
        """Load the new tensors into ``pipe.unet`` in place (its device and dtype) and return ``pipe``.

        Args:
            pipe: a pipeline of the base model these weights were made for.
            check_base: refuse a UNet that is not that base model (NaN or infinite
                values are refused either way).
        """
        self._check_applicable(pipe, check_base)
        params = dict(pipe.unet.named_parameters())
        for name, value in self.tensors.items():
            params[name].copy_(value)
        return pipe

    @contextmanager
    def applied(self, pipe, check_base: bool = True):
        """``pipe`` with the new tensors inside the block and its own values afterwards
        (an evaluator or an exporter borrowing the caller's pipeline).

        Args:
            pipe: a pipeline of the base model these weights were made for.
            check_base: refuse a UNet that is not that base model.
        """
        from .training import swapped_parameters

        self._check_applicable(pipe, check_base)
        with swapped_parameters(pipe.unet, self.tensors):
            yield pipe

    def _check_applicable(self, pipe, check_base: bool) -> None:
        self.check_finite()  # refused whether or not the base is checked
        if check_base:
            self.check_base(pipe.unet)

    # -- the file format -----------------------------------------------------------

    def metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "concepts": json.dumps(self.concepts),
            "config": json.dumps(self.config, sort_keys=True),
            "base_model": self.base_model,
            "base_fingerprint": json.dumps(self.base_fingerprint),
            "extra": json.dumps(self.extra, sort_keys=True),
            "versions": json.dumps(_versions()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the file atomically; refuse to replace an existing one unless ``overwrite``.

        Of two processes saving to the same new path at once, one succeeds and the other
        gets ``ErasureError`` ("already exists"); nothing is ever half-written.

        Args:
            path: a ``.safetensors`` file name.
            overwrite: replace an existing file (atomically).

        Returns:
            ``path``.
        """
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ErasureError(f"{path}: the output must end in .safetensors")
        if path.is_dir():
            raise ErasureError(f"{path} is a folder: give a file name ending in .safetensors")
        if path.exists() and not overwrite:
            raise ErasureError(f"{path} already exists: pass --overwrite (overwrite=True) to replace it")
        self.check_finite()
        remove_orphans(path)
        with reported_write_errors(path):
            atomic_write(path, lambda tmp: save_file(self.tensors, tmp, metadata=self.metadata()), replace=overwrite)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EditedWeights":
        """Read a file written by ``save``; safetensors only, nothing is unpickled."""
        path = Path(path)
        if not path.is_file():
            raise ErasureError(f"{path}: no such weights file")
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise ErasureError(f"{path} is not a readable .safetensors file ({error}): re-create it") from None
        if meta.get("format") != FORMAT_NAME:
            raise ErasureError(f"{path} is a safetensors file but not an erasure weights file (no erasure metadata)")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ErasureError(
                f"{path} has format version {meta.get('format_version')}, this erasure reads {FORMAT_VERSION}: "
                "upgrade erasure"
            )
        try:
            weights = cls(
                tensors=tensors,
                method=meta["method"],
                concepts=json.loads(meta["concepts"]),
                config=json.loads(meta["config"]),
                base_model=meta["base_model"],
                base_fingerprint=_read_fingerprint(meta.get("base_fingerprint")),
                extra=json.loads(meta.get("extra", "{}")),
            )
        except (KeyError, json.JSONDecodeError) as error:
            raise ErasureError(f"{path} has damaged erasure metadata ({error}): re-create it") from None
        if not isinstance(weights.config, dict):
            raise ErasureError(f"{path} has damaged erasure metadata (config is not a mapping): re-create it")
        try:
            weights.check_finite()
        except ErasureError as error:
            raise ErasureError(f"{path} is unusable: {error}") from None
        return weights


def _read_fingerprint(text: str | None):
    """The fingerprint as stored; a missing or unparsable one is kept as such for
    ``check_base`` to refuse (or a caller with ``check_base=False`` to ignore)."""
    if text is None:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def export_pipeline(edited: EditedWeights, pipe, folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a full diffusers pipeline folder with the edit applied (``from_pretrained`` opens it).

    ``pipe`` is edited for the save and restored afterwards; the folder appears only once
    complete, and without ``overwrite`` never replaces one that exists (even one that
    appeared meanwhile).

    Args:
        edited: the erased weights, made from ``pipe``'s model.
        pipe: the base pipeline.
        folder: the folder to write.
        overwrite: replace an existing folder (atomically).

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise ErasureError(f"{folder} already exists: pass --overwrite to replace it")
    if folder.exists() and not folder.is_dir():
        raise ErasureError(f"{folder} exists and is not a folder: remove it or choose another path")
    remove_orphans(folder)
    with reported_write_errors(folder), atomic_dir(folder, replace=overwrite) as staging, edited.applied(pipe):
        pipe.save_pretrained(staging, safe_serialization=True)
    return folder


def apply(pipe, weights: "str | os.PathLike | EditedWeights", check_base: bool = True):
    """Load erased weights (a path or an ``EditedWeights``) into a diffusers pipeline.

    Args:
        pipe: a Stable Diffusion pipeline of the base model the weights were made for.
        weights: a ``.safetensors`` file written by ``erase`` or an ``EditedWeights``.
        check_base: refuse weights made for another base model (recommended).

    Returns:
        The same pipeline, edited in place.
    """
    if not isinstance(weights, EditedWeights):
        weights = EditedWeights.load(weights)
    return weights.apply(pipe, check_base=check_base)
