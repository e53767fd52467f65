"""Stage 3 of MACE: the closed-form fusion of every concept's LoRA into one weight per
matrix (paper Eq. 10), streamed over concepts so memory does not grow with their number."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...closed_form import SOLVE_DTYPE, GramAccumulator, MappingTerm, solve_projections
from .statistics import preservation_terms

if TYPE_CHECKING:
    from . import MACEConfig


class LoRAFusion:
    """Streams stage 3's sums over concepts: ``G = sum_i G_i`` and, per matrix,
    ``sum_i dW_i G_i`` (with ``G_i`` the Gram of concept i's prompt tokens). Memory:
    one Gram and one weight-sized sum per matrix, however many concepts."""

    def __init__(self, dim: int, device):
        self.grams = GramAccumulator(dim, device)
        self.updates: dict[str, torch.Tensor] = {}
        self.concepts = 0

    def add(self, concept_grams: GramAccumulator, lora: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Add one concept: the Gram of its prompt tokens and its LoRA ``{weight name: (B, A)}``."""
        self.grams.keys += concept_grams.keys
        self.grams.cross += concept_grams.keys
        for name, (up, down) in lora.items():
            # (B A) G_i = B (A G_i): rank-r factors keep this O(out * dim).
            product = up.to(self.grams.keys) @ (down.to(self.grams.keys) @ concept_grams.keys)
            self.updates[name] = self.updates[name] + product if name in self.updates else product
        self.concepts += 1

    def terms(self, refined: dict[str, torch.Tensor]) -> list[MappingTerm]:
        """``sum_i (W' + dW_i) G_i = W' G + sum_i dW_i G_i``, and ``G`` on the left."""
        terms = [MappingTerm(refined, self.grams, 1.0)]
        if self.updates:
            terms.append(constant_term(self.updates, self.grams.keys.shape[0], self.grams.keys.device))
        return terms


def constant_term(values: dict[str, torch.Tensor], dim: int, device) -> MappingTerm:
    """A term adding ``values_l`` to the right-hand side and nothing to the Gram sum:
    ``MappingTerm`` contributes ``M_l C`` and ``G``; here ``M_l = values_l``, ``C = I``, ``G = 0``."""
    grams = GramAccumulator(dim, device)
    grams.cross = torch.eye(dim, dtype=SOLVE_DTYPE, device=device)
    return MappingTerm(values, grams, 1.0)


def fusion_scale(config: "MACEConfig") -> float:
    """``s_f``: its own setting, or ``s``."""
    return config.preserve_scale if config.fuse_preserve_scale is None else config.fuse_preserve_scale


def fuse(original, refined, fusion: LoRAFusion, general, domain, config: "MACEConfig"):
    """Stage 3 (Eq. 10): one weight per matrix that carries every concept's LoRA on its prompts.

    Args:
        original: ``W0`` (the preservation terms' targets, as in stage 1).
        refined: ``W'``, the anchor.
        fusion: the streamed sums of every concept's LoRA.
        general, domain: ``P2``, ``D2`` or ``None``.
        config: ``lam``, ``fuse_preserve_scale``, ``domain_weight``...
    """
    terms = fusion.terms(refined) + preservation_terms(original, general, domain, fusion_scale(config), config)
    return solve_projections(refined, config.lam, terms)
