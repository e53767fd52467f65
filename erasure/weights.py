"""The one weight format: a ``.safetensors`` file of the changed UNet tensors.

Keys are diffusers UNet parameter names, so plain
``pipe.unet.load_state_dict(safetensors.torch.load_file(path), strict=False)`` works.
The header metadata records what made the file and which base model it belongs to;
``erasure.apply`` checks that before touching a pipeline.

The base-model fingerprint is a few statistics and sampled values of every original
tensor the file replaces, compared with a tolerance rather than hashed: a base model
loaded in float16 or bfloat16 is the same base model, another checkpoint is not.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .atomic import atomic_dir, atomic_write
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


def _versions() -> dict[str, str]:
    import diffusers

    from . import __version__

    return {
        "erasure": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
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
        base_fingerprint: ``fingerprint()`` of the original tensors these replace.
        extra: method-specific results (e.g. RECE's chosen epoch), JSON-serialisable.
    """

    tensors: dict[str, torch.Tensor]
    method: str
    concepts: list[str]
    config: dict
    base_model: str
    base_fingerprint: dict[str, list[float]]
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_edit(cls, original: dict[str, torch.Tensor], new: dict[str, torch.Tensor], **provenance):
        """Build from the original and new values of the same tensors."""
        tensors = {name: value.detach().to("cpu", torch.float32).contiguous() for name, value in new.items()}
        return cls(tensors=tensors, base_fingerprint=fingerprint(original), **provenance)

    # -- applying ----------------------------------------------------------------

    def check_base(self, unet: torch.nn.Module) -> None:
        """Raise ``ErasureError`` unless ``unet`` is the base model these weights were made for."""
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
                    f"({self.base_model!r}): load that model, or pass --no-check-base (check_base=False in Python) to apply anyway"
                )

    @torch.no_grad()
    def apply(self, pipe, check_base: bool = True):
        """Load the new tensors into ``pipe.unet`` in place (its device and dtype) and return ``pipe``."""
        if check_base:
            self.check_base(pipe.unet)
        params = dict(pipe.unet.named_parameters())
        for name, value in self.tensors.items():
            params[name].copy_(value)
        return pipe

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
        """Write the file atomically; refuse to replace an existing one unless ``overwrite``."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ErasureError(f"{path}: the output must end in .safetensors")
        if path.exists() and not overwrite:
            raise ErasureError(f"{path} already exists: pass --overwrite (overwrite=True) to replace it")
        atomic_write(path, lambda tmp: save_file(self.tensors, tmp, metadata=self.metadata()))
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
            return cls(
                tensors=tensors,
                method=meta["method"],
                concepts=json.loads(meta["concepts"]),
                config=json.loads(meta["config"]),
                base_model=meta["base_model"],
                base_fingerprint=json.loads(meta["base_fingerprint"]),
                extra=json.loads(meta.get("extra", "{}")),
            )
        except (KeyError, json.JSONDecodeError) as error:
            raise ErasureError(f"{path} has damaged erasure metadata ({error}): re-create it") from None


def export_pipeline(edited: EditedWeights, pipe, folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a full diffusers pipeline folder with the edit applied (``from_pretrained`` opens it).

    ``pipe`` is edited for the save and restored afterwards; the folder appears only once complete.
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise ErasureError(f"{folder} already exists: pass --overwrite to replace it")
    params = dict(pipe.unet.named_parameters())
    original = {name: params[name].detach().clone() for name in edited.tensors}
    try:
        with atomic_dir(folder) as staging:
            edited.apply(pipe)
            pipe.save_pretrained(staging, safe_serialization=True)
    finally:
        with torch.no_grad():
            for name, value in original.items():
                params[name].copy_(value)
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
