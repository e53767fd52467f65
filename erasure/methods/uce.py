"""UCE: Unified Concept Editing (Gandikota, Orgad, Belinkov, Materzynska, Bau; WACV 2024).

A closed-form edit of every cross-attention key/value projection (paper Eq. 7):

    W = [ lam W0 + s_e sum_i v_i* e_i^T + s_p sum_j W0 e_j e_j^T ]
        @ [ lam I + s_e sum_i e_i e_i^T + s_p sum_j e_j e_j^T ]^-1

with ``v_i* = W0 e_target`` (the "replace" technique): the erased concept's token
vectors ``e_i`` now produce the keys and values of the guide concept, while preserved
prompts' tokens ``e_j`` keep theirs. The empty prompt is always preserved.

Token choice, where the authors' two releases differ:
- ``from_last_subject`` (2023 code, the default; RECE builds on it): the tokens from the
  concept's last word to the end of the 77-token sequence (the word, the end token,
  the padding), paired position by position with the guide's from its last word on.
- ``last_subject`` (2025 code): only the concept's last word, paired with the guide's.

Deviation: none in the update; the solve is one float64 Cholesky for all layers
instead of an inverse per layer (same result, see ``erasure.closed_form``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ..adapters import StableDiffusionAdapter, adapter_for
from ..closed_form import GramAccumulator, MappingTerm, solve_projections
from ..concepts import Concept
from ..config import MethodConfig, setting
from ..edit import Edit
from ..errors import ErasureError
from ..training import RunOptions

TokenChoice = Literal["from_last_subject", "last_subject"]


@dataclass
class UCEConfig(MethodConfig):
    """UCE settings; defaults from the paper and the authors' 2023 code (``train_erase.py``).

    Attributes:
        guide: what erased concepts become when a concept names no target:
            ``""`` for objects and unsafe content, ``"art"`` for artists.
        preserve: prompts whose keys/values must not move (for artists, the other
            artists of a list); the empty prompt is always added.
        lam: weight of staying near the original weights (paper: 0.5); positive,
            since with few erased tokens the system is singular without it.
        erase_scale: ``s_e`` (paper: 1).
        preserve_scale: ``s_p`` (paper: 1); ``None`` uses the 2023 code's
            ``max(0.1, 1 / len(preserve))``.
        token_choice: ``from_last_subject`` (2023 code) or ``last_subject`` (2025 code).
        prompt_templates: prompts made from each concept and, identically, its guide;
            ``["{}"]`` is the bare concept as in the paper; the authors' code can add
            e.g. ``"painting by {}"`` for artists.
    """

    guide: str = ""
    preserve: list[str] = field(default_factory=list)
    lam: float = setting(0.5, above=0)
    erase_scale: float = setting(1.0, above=0)
    preserve_scale: float | None = setting(1.0, min=0)
    token_choice: TokenChoice = "from_last_subject"
    prompt_templates: list[str] = field(default_factory=lambda: ["{}"])

    def check(self) -> None:
        if not self.prompt_templates or any("{}" not in t for t in self.prompt_templates):
            raise ErasureError(
                f"UCEConfig.prompt_templates {self.prompt_templates!r}: give at least one template, each with {{}} "
                "where the concept goes (e.g. ['{}', 'painting by {}'])"
            )


def erase(pipe, concepts: list[Concept], config: UCEConfig, run: RunOptions = RunOptions()) -> Edit:
    """Erase ``concepts`` from ``pipe`` (left unchanged) in one closed-form solve.

    Args:
        pipe: a Stable Diffusion pipeline (SD 1.x, 2.x or SDXL).
        concepts: the concepts to erase (``"cat->dog"`` names a guide per concept).
        config: ``UCEConfig``.
        run: unused (a closed-form edit has nothing to checkpoint).

    Returns:
        An ``Edit`` of every cross-attention key/value projection.
    """
    adapter = adapter_for(pipe)
    original = {name: w.detach().clone() for name, w in adapter.cross_attention_weights().items()}
    sources, targets = concept_prompt_pairs(concepts, config)
    erased = aligned_token_grams(adapter, sources, targets, config.token_choice)
    preserved = preservation_grams(adapter, config.preserve, config.token_choice)
    return Edit.of_unet(original, solve_uce(original, original, erased, preserved, config))


def solve_uce(
    anchor: dict[str, torch.Tensor],
    values_from: dict[str, torch.Tensor],
    erased: GramAccumulator,
    preserved: GramAccumulator,
    config: UCEConfig,
) -> dict[str, torch.Tensor]:
    """The UCE update with anchor ``anchor`` and target/preserved values read through ``values_from``."""
    preserve_scale = config.preserve_scale
    if preserve_scale is None:
        preserve_scale = max(0.1, 1.0 / max(1, len(config.preserve)))
    terms = [MappingTerm(values_from, erased, config.erase_scale), MappingTerm(values_from, preserved, preserve_scale)]
    return solve_projections(anchor, config.lam, terms)


def concept_prompt_pairs(concepts: list[Concept], config: UCEConfig) -> tuple[list[str], list[str]]:
    """Erased prompts and, position by position, the guide prompts they should become."""
    sources, targets = [], []
    for concept in concepts:
        target = guide_of(concept, config.guide)
        for template in config.prompt_templates:
            sources.append(template.format(concept.text))
            targets.append(template.format(target) if target.strip() else target)
    return sources, targets


def guide_of(concept: Concept, guide: str) -> str:
    """The concept's own target if it names one (``"cat->dog"``), else the config's guide."""
    return guide if concept.target is None else concept.target


def token_spans(source_count: int, target_count: int, length: int, token_choice: TokenChoice):
    """Equal-length position slices of a source and a target prompt.

    ``*_count`` are the numbers of real tokens (start and end included), so the last
    word sits at ``count - 2``; for an empty prompt that is the start token, as in the
    authors' code.
    """
    source_last, target_last = source_count - 2, target_count - 2
    if token_choice == "last_subject":
        return slice(source_last, source_last + 1), slice(target_last, target_last + 1)
    farthest = max(source_last, target_last)
    return (
        slice(source_last, length - (farthest - source_last)),
        slice(target_last, length - (farthest - target_last)),
    )


def aligned_token_grams(
    adapter: StableDiffusionAdapter, sources: list[str], targets: list[str], token_choice: TokenChoice
) -> GramAccumulator:
    """Grams of the source prompts' token vectors (keys) against the targets' (sources of values)."""
    grams = GramAccumulator(adapter.text_dim, adapter.device)
    source_emb, target_emb = adapter.encode(sources), adapter.encode(targets)
    length = source_emb.hidden.shape[1]
    for i in range(len(sources)):
        source_span, target_span = token_spans(
            int(source_emb.token_counts[i]), int(target_emb.token_counts[i]), length, token_choice
        )
        grams.add(source_emb.hidden[i, source_span], target_emb.hidden[i, target_span])
    return grams


def preservation_grams(
    adapter: StableDiffusionAdapter, preserve: list[str], token_choice: TokenChoice
) -> GramAccumulator:
    """Grams of the preserved prompts' tokens, the empty prompt always among them, streamed."""
    grams = GramAccumulator(adapter.text_dim, adapter.device)
    prompts = [""] + [p for p in preserve if p.strip()]
    for _, embeddings in adapter.encode_in_batches(prompts):
        length = embeddings.hidden.shape[1]
        for i, count in enumerate(embeddings.token_counts.tolist()):
            span, _ = token_spans(count, count, length, token_choice)
            grams.add(embeddings.hidden[i, span])
    return grams
