"""Attacked images: how much of an erased concept an adversary gets back.

``evaluate(..., attack="closed-form")`` (``erase-eval --attack closed-form``) adds a third
variant, ``attacked``: for every ``erased`` and ``synonym`` row (every row of an untyped
set) the erased model generates from RECE's closed-form adversarial embedding of the
row's prompt (Gong et al., ECCV 2024; ``erasure.attacks.closed_form_embedding``): the
token vectors that make the erased cross-attention reproduce what the base model
computed for the prompt. Everything else is as for the prompt itself (the row's seed and
guidance, the pipeline's negative for the empty prompt, the same batching and resumable
PNG records), so each attacked image pairs with the row's base and erased images.
``retained`` rows are not attacked: nothing was erased from them.

The accuracy on attacked erased rows (``report.headline("world", "attacked")``) is the
robustness number: how much of the concept the erasure lets through under attack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..adapters import PromptEmbeddings, adapter_for
from ..attacks import DEFAULT_REG, closed_form_embedding
from ..errors import ErasureError
from ..weights import EditedWeights
from .prompts import PromptRow

ATTACKS = ("closed-form",)
ATTACKED_TYPES = ("erased", "synonym")  # the rows whose concept was erased
VARIANT = "attacked"  # the report's column and the images' folder


@dataclass(frozen=True)
class ClosedFormAttack:
    """RECE's closed-form adversarial embedding against one set of erased weights.

    Attributes:
        reg: the solve's regularisation (``closed_form_embedding``'s ``reg``).
        original: the base model's values of the cross-attention projections that the
            erased weights change (the solve's ``W0``); while generating, the pipeline
            holds the erased values (``W'``).
    """

    reg: float = DEFAULT_REG
    original: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    name: ClassVar[str] = "closed-form"

    @classmethod
    def against(cls, pipe, weights: EditedWeights, reg: float = DEFAULT_REG) -> "ClosedFormAttack":
        """The attack on ``weights``, from ``pipe`` holding the base weights (copied now).

        Args:
            pipe: the base pipeline, before the erased weights are applied.
            weights: the erased weights under attack.
            reg: the solve's regularisation.
        """
        projections = adapter_for(pipe).cross_attention_weights()
        original = {name: w.detach().clone() for name, w in projections.items() if name in weights.tensors}
        return cls(float(reg), original)

    def record(self) -> dict:
        """The attack's settings, stored in every attacked image's record."""
        return {"method": self.name, "reg": self.reg}

    def embeddings(self, pipe, prompts: list[str]) -> PromptEmbeddings:
        """The adversarial embedding of each prompt (one solve); ``pipe`` holds the erased weights."""
        return closed_form_embedding(pipe, prompts, original=self.original, reg=self.reg)


def check_attack(name: str | None, reg: float, weights: EditedWeights | None, rows: list[PromptRow]) -> list[PromptRow]:
    """The rows to attack (none without an attack), or a one-line error naming the fix.

    Args:
        name: ``None`` or one of ``ATTACKS``.
        reg: the solve's regularisation (``>= 0``).
        weights: the erased weights (an attack needs them).
        rows: the prompt set's rows.
    """
    if name is None:
        return []
    if name not in ATTACKS:
        raise ErasureError(f"unknown attack {name!r}: use one of {', '.join(ATTACKS)}")
    if weights is None:
        raise ErasureError(f"--attack {name} attacks erased weights: pass --weights (not --base-only)")
    if not reg >= 0:
        raise ErasureError(f"--attack-reg {reg} must be at least 0")
    attacked = attacked_rows(rows)
    if not attacked:
        raise ErasureError(f"--attack {name}: the prompt set has no {' or '.join(ATTACKED_TYPES)} rows to attack: "
                           "use a set with them, or drop --attack")
    return attacked


def attacked_rows(rows: list[PromptRow]) -> list[PromptRow]:
    """The ``erased`` and ``synonym`` rows; every row of a set without types."""
    if not any(row.type for row in rows):
        return list(rows)
    return [row for row in rows if row.type in ATTACKED_TYPES]


def attack_summary(attack: ClosedFormAttack, rows: list[PromptRow]) -> dict:
    """``report.json``'s ``attack`` entry: the settings and which rows were attacked."""
    types = sorted({row.group for row in rows}, key=lambda t: (t not in ATTACKED_TYPES, t))
    return {**attack.record(), "variant": VARIANT, "rows": len(rows), "types": types,
            "embedding": "RECE's closed-form adversarial embedding of each row's prompt against the erased weights, "
                         "the base weights as the original; generated by the erased model"}
