"""The regularised least-squares edit of cross-attention projections, shared by UCE,
RECE and MACE (stages 1 and 3).

Every cross-attention key/value projection ``W_l`` reads the same token vectors ``e``,
so all the objectives have the form

    W_l* = argmin  lam ||W - A_l||^2 + sum_k s_k sum_i ||W e_ki - M_kl e'_ki||^2

whose solution is

    W_l* = [ lam A_l + sum_k s_k M_kl C_k ] @ [ lam I + sum_k s_k G_k ]^-1,
    G_k = sum_i e_ki e_ki^T,   C_k = sum_i e'_ki e_ki^T.

The Gram matrices ``G_k, C_k`` live in text space (dim x dim) and do not depend on the
layer, so they are streamed once over any number of prompts (memory stays
``O(dim^2)`` per term, however many concepts or captions), and one linear system with
all layers as right-hand sides gives every new projection at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

SOLVE_DTYPE = torch.float64


class GramAccumulator:
    """Streams ``G = sum w e e^T`` and ``C = sum w e' e^T`` over batches of token vectors."""

    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        self.keys = torch.zeros(dim, dim, dtype=SOLVE_DTYPE, device=device)
        self.cross = torch.zeros(dim, dim, dtype=SOLVE_DTYPE, device=device)
        self.count = 0

    def add(self, keys: torch.Tensor, sources: torch.Tensor | None = None, weight: float = 1.0) -> None:
        """Add token vectors.

        Args:
            keys: ``(n, dim)`` vectors ``e`` whose outputs are constrained.
            sources: ``(n, dim)`` vectors ``e'`` whose current outputs ``M e'`` the keys
                should map to; ``None`` means the keys themselves (preservation).
            weight: per-batch weight (e.g. MACE's domain weight ``w``).
        """
        keys = keys.reshape(-1, keys.shape[-1]).to(self.keys.device, SOLVE_DTYPE)
        sources = keys if sources is None else sources.reshape(keys.shape).to(self.keys.device, SOLVE_DTYPE)
        self.keys += weight * keys.T @ keys
        self.cross += weight * sources.T @ keys
        self.count += keys.shape[0]


@dataclass
class MappingTerm:
    """One ``s_k sum_i ||W e_ki - M_kl e'_ki||^2`` term of the objective.

    Attributes:
        targets: per projection name, the matrix ``M_kl`` whose outputs are the targets
            (the original weights for UCE's "replace"; a LoRA-updated weight in MACE's fusion).
        grams: the streamed ``G_k`` and ``C_k``.
        scale: ``s_k``.
    """

    targets: dict[str, torch.Tensor]
    grams: GramAccumulator
    scale: float = 1.0


def solve_projections(
    anchors: dict[str, torch.Tensor], lam: float, terms: list[MappingTerm]
) -> dict[str, torch.Tensor]:
    """New weights for every projection in ``anchors``, from one symmetric solve.

    Args:
        anchors: ``A_l`` per projection name (``(out, dim)`` each; ``out`` may differ).
        lam: the weight of staying near the anchor; ``0`` is allowed when the Gram sum
            is full rank (MACE's explicit-content setting).
        terms: the mapping and preservation terms.

    Returns:
        The new weights, same names, shapes, dtypes and devices as the anchors.
    """
    names = list(anchors)
    dim = anchors[names[0]].shape[1]
    device = terms[0].grams.keys.device if terms else anchors[names[0]].device
    lhs = lam * torch.eye(dim, dtype=SOLVE_DTYPE, device=device)
    # Terms reading values through the same matrices share one product: sum_k s_k C_k first.
    crosses: dict[int, tuple[dict, torch.Tensor]] = {}
    for term in terms:
        lhs += term.scale * term.grams.keys
        targets, cross = crosses.get(id(term.targets), (term.targets, 0))
        crosses[id(term.targets)] = (targets, cross + term.scale * term.grams.cross)
    # All projections stacked as rows: rhs = lam A + sum M C^T, then one inverse for all layers.
    anchor_rows = _rows(anchors, names, device)
    rhs = lam * anchor_rows
    for targets, cross in crosses.values():
        rhs += (anchor_rows if targets is anchors else _rows(targets, names, device)) @ cross
    solution = rhs @ _inverse_symmetric(lhs)
    new, start = {}, 0
    for name in names:
        out = anchors[name].shape[0]
        new[name] = solution[start : start + out].to(anchors[name].device, anchors[name].dtype).contiguous()
        start += out
    return new


def _rows(weights: dict[str, torch.Tensor], names: list[str], device) -> torch.Tensor:
    return torch.cat([weights[name].to(device, SOLVE_DTYPE) for name in names])


def _inverse_symmetric(matrix: torch.Tensor) -> torch.Tensor:
    """Cholesky when positive definite (the usual case, lam > 0), pseudo-inverse otherwise."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        return torch.cholesky_inverse(factor)
    # Singular Gram sum (lam = 0 with few tokens): the minimum-norm least-squares solution.
    return torch.linalg.pinv(matrix, hermitian=True)


Regulariser = Literal["zero", "guide", "outputs", "concept", "outputs_and_concept"]


def adversarial_embedding(
    current: dict[str, torch.Tensor],
    original: dict[str, torch.Tensor],
    tokens: torch.Tensor,
    reg: float,
    regulariser: Regulariser = "zero",
    guide: torch.Tensor | None = None,
) -> torch.Tensor:
    """The token vectors that make the edited projections reproduce the original ones.

    RECE (Gong et al., ECCV 2024, Eq. 6), shared over all projections ``l``:

        c' = argmin_c'  sum_l ||W'_l c' - W0_l c||^2 + reg R(c')
           = (reg I + G)^-1 C c        for R = ||c'||^2 (``zero``, the paper's),

    with ``G = sum_l W'_l^T W'_l`` and ``C = sum_l W'_l^T W0_l``. The authors' code has
    more regularisers (``--emb_computing``, ``--reg_item``):

    - ``guide``: ``R = ||c' - g||^2``, towards the guide's token vectors ``g``
      (``close_standardreg``): ``c' = (reg I + G)^-1 (C c + reg g)``;
    - ``outputs``: ``R = sum_l ||W'_l (c' - c)||^2``, towards the edited model's own
      outputs for ``c`` (``close_surrogatereg --reg_item 1st``):
      ``c' = ((1 + reg) G)^-1 (C + reg G) c``;
    - ``concept``: ``R = ||c' - c||^2``, towards ``c`` itself (``--reg_item 2nd``):
      ``c' = (reg I + G)^-1 (C + reg I) c``;
    - ``outputs_and_concept``: both (``--reg_item both``).

    Args:
        current: edited weights ``W'_l`` by name.
        original: original weights ``W0_l`` under the same names.
        tokens: ``(n, dim)`` vectors ``c`` (e.g. the 77 token vectors of a concept prompt).
        reg: ``reg``; larger keeps ``c'`` small and limits collateral damage.
        regulariser: ``zero``, ``guide``, ``outputs``, ``concept`` or ``outputs_and_concept``.
        guide: ``(n, dim)`` vectors ``g`` (``regulariser="guide"`` only).

    Returns:
        ``(n, dim)`` adversarial vectors, in the dtype and device of ``tokens``.
    """
    device = tokens.device
    dim = tokens.shape[-1]
    gram = torch.zeros(dim, dim, dtype=SOLVE_DTYPE, device=device)
    cross = torch.zeros(dim, dim, dtype=SOLVE_DTYPE, device=device)
    for name, edited in current.items():
        edited = edited.to(device, SOLVE_DTYPE)
        gram += edited.T @ edited
        cross += edited.T @ original[name].to(device, SOLVE_DTYPE)
    identity = torch.eye(dim, dtype=SOLVE_DTYPE, device=device)
    # lhs c' = cross c (+ reg g): each regulariser adds its Gram to lhs and its pull to cross.
    lhs = gram.clone()
    if regulariser in ("zero", "guide", "concept", "outputs_and_concept"):
        lhs += reg * identity
    if regulariser in ("outputs", "outputs_and_concept"):
        lhs += reg * gram
        cross = cross + reg * gram
    if regulariser in ("concept", "outputs_and_concept"):
        cross = cross + reg * identity
    # Rows: c'^T = (c^T cross^T + reg g^T) lhs^-1 (lhs is symmetric).
    rhs = tokens.to(SOLVE_DTYPE) @ cross.T
    if regulariser == "guide":
        if guide is None:
            raise ValueError("the guide regulariser needs the guide's token vectors")
        rhs = rhs + reg * guide.to(device, SOLVE_DTYPE).reshape(rhs.shape)
    return (rhs @ _inverse_symmetric(lhs)).to(tokens.dtype)
