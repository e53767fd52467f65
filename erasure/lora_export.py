"""Erased weights as a LoRA file that diffusers loads with ``pipe.load_lora_weights(path)``.

An erasure changes some UNet matrices ``W0 -> W``. The difference ``W - W0`` of each is
factorised by SVD and truncated to ``rank``: ``W - W0 ~ B A`` with ``B = U_r sqrt(S_r)``,
``A = sqrt(S_r) V_r^T`` (the best rank-r approximation in Frobenius norm). The factors
are written under diffusers' PEFT key names (``unet.<module>.lora_A.weight``,
``unet.<module>.lora_B.weight``) with no alphas, so the LoRA scale is 1 and
``pipe.load_lora_weights(path)`` then ``pipe.fuse_lora()`` gives back ``W`` up to the
truncation, whose relative error is reported. Closed-form edits are often of high rank:
check the error before sharing a low-rank file; the ``.safetensors`` weights file of
``EditedWeights.save`` stays the exact format.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .atomic import atomic_write, remove_orphans, reported_write_errors
from .errors import ErasureError
from .weights import EditedWeights

UNET_PREFIX = "unet"
_EXACT = 1e-6  # below this relative size a difference is float noise, not an edit


@dataclass(frozen=True)
class LoRAExport:
    """What ``export_lora`` wrote.

    Attributes:
        path: the LoRA file.
        rank: the largest rank used (a matrix's rank is capped by its smaller side).
        relative_error: ``||approximation - delta||_F / ||delta||_F`` over all matrices.
        max_relative_error: the same for the worst single matrix.
        matrices: how many matrices the LoRA changes.
    """

    path: Path
    rank: int
    relative_error: float
    max_relative_error: float
    matrices: int


def export_lora(
    edited: EditedWeights,
    base: "torch.nn.Module | dict[str, torch.Tensor] | object",
    path: str | os.PathLike,
    rank: int = 64,
    overwrite: bool = False,
) -> LoRAExport:
    """Write ``edited`` minus the base weights as a diffusers-loadable LoRA.

    Args:
        edited: the erased weights (from ``erasure.erase`` or ``EditedWeights.load``).
        base: the base model's weights: a pipeline, a UNet (both checked against the
            weights' base-model fingerprint) or a dict of the original tensors under
            UNet parameter names. Not a pipeline that already holds the edit.
        path: output ``.safetensors`` file.
        rank: rank of each matrix's factors (capped by the matrix's smaller side).
        overwrite: replace an existing file.

    Returns:
        ``LoRAExport`` with the rank and the relative reconstruction errors.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ErasureError(f"{path}: the LoRA file must end in .safetensors")
    if path.is_dir():
        raise ErasureError(f"{path} is a folder: give a file name ending in .safetensors")
    if path.exists() and not overwrite:
        raise ErasureError(f"{path} already exists: pass --overwrite (overwrite=True) to replace it")
    if rank < 1:
        raise ErasureError(f"LoRA rank must be at least 1, got {rank}")
    others = [c for c in edited.components if c != "unet"]
    if others:
        raise ErasureError(
            f"these weights edit the {others[0]}: a LoRA export covers UNet tensors only; share the .safetensors "
            "weights file or a pipeline folder (--export diffusers) instead"
        )
    edited.check_finite()
    original = _base_tensors(edited, base)
    tensors, squared_error, squared_norm, base_norm, worst, used = {}, 0.0, 0.0, 0.0, 0.0, 0
    for name, new in edited.tensors.items():
        before = original[name].detach().double().cpu()
        delta = new.double().cpu() - before
        base_norm += float(before.norm()) ** 2
        if delta.ndim != 2:
            raise ErasureError(f"{name} is not a matrix: only linear layers can be exported as a LoRA")
        up, down, error = low_rank_factors(delta, rank)
        module = name.removesuffix(".weight")
        tensors[f"{UNET_PREFIX}.{module}.lora_A.weight"] = down.float().contiguous()
        tensors[f"{UNET_PREFIX}.{module}.lora_B.weight"] = up.float().contiguous()
        norm = float(delta.norm()) ** 2
        squared_error, squared_norm = squared_error + error**2, squared_norm + norm
        worst = max(worst, error / max(norm**0.5, 1e-30))
        used = max(used, down.shape[0])
    if squared_norm < (_EXACT**2) * base_norm:
        raise ErasureError("the base weights equal the edited ones: pass the base model, not a pipeline already edited")
    relative = (squared_error / squared_norm) ** 0.5
    metadata = {
        "format": "erasure-lora",
        "method": edited.method,
        "concepts": json.dumps(edited.concepts),
        "base_model": edited.base_model,
        "rank": str(used),
        "relative_error": f"{relative:.6g}",
    }
    remove_orphans(path)
    with reported_write_errors(path):
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), replace=overwrite)
    return LoRAExport(path, used, relative, worst, len(edited.tensors))


def low_rank_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(B, A, error)``: the best rank-``rank`` factors ``B A`` of ``delta`` and
    ``||delta - B A||_F`` (the norm of the dropped singular values)."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    r = min(rank, s.shape[0])
    root = s[:r].sqrt()
    return u[:, :r] * root, root[:, None] * vh[:r], float(s[r:].norm())


def _base_tensors(edited: EditedWeights, base) -> dict[str, torch.Tensor]:
    if isinstance(base, dict):
        missing = [name for name in edited.tensors if name not in base]
        if missing:
            raise ErasureError(f"the base tensors lack {missing[0]!r}: pass the base model's UNet parameters")
        return base
    unet = getattr(base, "unet", base)
    if not isinstance(unet, torch.nn.Module):
        raise ErasureError("base must be a pipeline, a UNet or a dict of the original UNet tensors")
    edited.check_base(base)
    return dict(unet.named_parameters())
