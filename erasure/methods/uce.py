"""UCE: Unified Concept Editing (Gandikota, Orgad, Belinkov, Materzynska, Bau; WACV 2024).

A closed-form edit of every cross-attention key/value projection (paper Eq. 7):

    W = [ lam W0 + s_e sum_i v_i* e_i^T + s_p sum_j W0 e_j e_j^T ]
        @ [ lam I + s_e sum_i e_i e_i^T + s_p sum_j e_j e_j^T ]^-1

with ``v_i* = W0 e_target`` (the "replace" technique): the erased concept's token
vectors ``e_i`` now produce the keys and values of the guide concept, while preserved
prompts' tokens ``e_j`` keep theirs.

Defaults: the authors' 2023 code (``train-scripts/train_erase.py``), which made the
paper's tables and which RECE builds on. Where the authors' two releases differ, an
option selects the other (``configs/uce/authors-2025.yaml`` sets them all):

- ``token_choice``: ``from_last_subject`` (2023) takes the concept's tokens from its
  last word to the end of the 77-token sequence (the word, the end token, the padding),
  paired position by position with the guide's from its last word on; ``last_subject``
  (2025, ``uce_sd_erase.py``) only the last word, paired with the guide's.
- ``preserve_tokens``: ``all`` (2023) preserves all 77 positions of a preserved prompt;
  ``erased_span`` the positions ``token_choice`` picks (2025).
- ``preserve_empty``: the 2023 code always preserves the empty prompt; the 2025 code
  does not.
- ``preserve_scale: null``: the 2023 code's rule ``max(0.1, 1 / n)``, ``n`` the number of
  preserved prompts with the empty one; the 2025 code's default is 1.
- ``guide_templates``: with ``prompt_templates``, the 2023 code templates the concept
  but keeps the bare guide ("painting by Van Gogh" -> "art": ``never``); the 2025 code
  templates both, even an empty guide ("image of " : ``always``).
- ``preserve_file``: the 2023 code's artist setting preserves every artist of a list
  (its ``data/artists1734_prompts.csv``, column ``artist``) but the erased ones.

Deviation: none in the update; the solve is one float64 Cholesky for all layers
instead of an inverse per layer (same result, see ``erasure.closed_form``).
``docs/equivalence.md`` has the measured agreement with both releases.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
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
PreserveTokens = Literal["all", "erased_span"]
GuideTemplates = Literal["never", "when_nonempty", "always"]


@dataclass
class UCEConfig(MethodConfig):
    """UCE settings; defaults from the paper and the authors' 2023 code (``train_erase.py``),
    which produced the paper's tables. ``configs/uce/authors-2025.yaml`` holds the 2025
    code's (``uce_sd_erase.py``).

    Attributes:
        guide: what erased concepts become when a concept names no target:
            ``""`` for objects and unsafe content, ``"art"`` for artists.
        preserve: prompts whose keys/values must not move (for artists, other artists).
        preserve_file: more prompts to preserve, read when erasing: a text file (one
            prompt a line) or a CSV (the column ``preserve_column``, each value once);
            erased concepts are left out, as the 2023 code does with its list of 1,734
            artists (``data/artists1734_prompts.csv`` of the UCE repository).
        preserve_column: the CSV column ``preserve_file`` reads.
        preserve_empty: also preserve the empty prompt (2023 code: yes; 2025 code: no).
        lam: weight of staying near the original weights (paper: 0.5); positive,
            since with few erased tokens the system is singular without it.
        erase_scale: ``s_e`` (paper: 1).
        preserve_scale: ``s_p``; ``None`` (2023 code) is ``max(0.1, 1 / n)`` with ``n``
            the preserved prompts, the empty one included: 1 when only the empty prompt
            is preserved, 0.1 for the 1,734 artists; the 2025 code uses 1.
        token_choice: ``from_last_subject`` (2023 code) or ``last_subject`` (2025 code).
        preserve_tokens: ``all`` 77 positions of a preserved prompt (2023 code, RECE) or
            the ``erased_span`` that ``token_choice`` picks (2025 code).
        prompt_templates: prompts made from each concept (``{}`` = the concept);
            ``["{}"]`` is the bare concept as in the paper; the authors' code can add
            e.g. ``"painting by {}"`` for artists.
        guide_templates: whether the guide is templated like the concept: ``never``
            (2023 code: "painting by Van Gogh" -> "art"), ``when_nonempty``
            ("painting by art", an empty guide stays empty) or ``always`` (2025 code:
            "image of {}" makes the empty guide "image of ").
    """

    guide: str = ""
    preserve: list[str] = field(default_factory=list)
    preserve_file: str | None = None
    preserve_column: str = "artist"
    preserve_empty: bool = True
    lam: float = setting(0.5, above=0)
    erase_scale: float = setting(1.0, above=0)
    preserve_scale: float | None = setting(None, min=0)
    token_choice: TokenChoice = "from_last_subject"
    preserve_tokens: PreserveTokens = "all"
    prompt_templates: list[str] = field(default_factory=lambda: ["{}"])
    guide_templates: GuideTemplates = "never"

    def check(self) -> None:
        if not self.prompt_templates or any("{}" not in t for t in self.prompt_templates):
            raise ErasureError(
                f"UCEConfig.prompt_templates {self.prompt_templates!r}: give at least one template, each with {{}} "
                "where the concept goes (e.g. ['{}', 'painting by {}'])"
            )
        if self.preserve_file is not None and not self.preserve_file.strip():
            raise ErasureError("UCEConfig.preserve_file is empty: give a text or CSV file of prompts, or null")


def erase(pipe, concepts: list[Concept], config: UCEConfig, run: RunOptions = RunOptions()) -> Edit:
    """Erase ``concepts`` from ``pipe`` (left unchanged) in one closed-form solve.

    Args:
        pipe: a Stable Diffusion pipeline (SD 1.x, 2.x or SDXL).
        concepts: the concepts to erase (``"cat->dog"`` names a guide per concept).
        config: ``UCEConfig``.
        run: unused (a closed-form edit has nothing to checkpoint).

    Returns:
        An ``Edit`` of every cross-attention key/value projection; ``extra`` records
        the preserved prompts' count and the preserve scale used.
    """
    adapter = adapter_for(pipe)
    original = {name: w.detach().clone() for name, w in adapter.cross_attention_weights().items()}
    sources, targets = concept_prompt_pairs(concepts, config)
    erased = aligned_token_grams(adapter, sources, targets, config.token_choice)
    preserve = preserved_prompts(concepts, config)
    preserved = preservation_grams(adapter, preserve, config)
    scale = preserve_scale_of(config, len(preserve))
    new = solve_uce(original, original, erased, preserved, config.lam, config.erase_scale, scale)
    return Edit.of_unet(original, new, {"preserved_prompts": len(preserve) + config.preserve_empty, "preserve_scale": scale})


def solve_uce(
    anchor: dict[str, torch.Tensor],
    values_from: dict[str, torch.Tensor],
    erased: GramAccumulator,
    preserved: GramAccumulator,
    lam: float,
    erase_scale: float,
    preserve_scale: float,
) -> dict[str, torch.Tensor]:
    """The UCE update with anchor ``anchor`` and target/preserved values read through ``values_from``.

    Args:
        anchor: the weights to stay near (the originals; RECE: the current ones).
        values_from: the weights whose outputs are the targets.
        erased: Grams of the erased tokens against their targets.
        preserved: Grams of the preserved tokens.
        lam, erase_scale, preserve_scale: ``lam``, ``s_e``, ``s_p``.
    """
    terms = [MappingTerm(values_from, erased, erase_scale), MappingTerm(values_from, preserved, preserve_scale)]
    return solve_projections(anchor, lam, terms)


def preserve_scale_of(config: UCEConfig, prompts: int) -> float:
    """``s_p``: the configured one, or the 2023 code's ``max(0.1, 1 / n)``.

    Args:
        config: the UCE settings.
        prompts: the number of preserved prompts besides the empty one.
    """
    if config.preserve_scale is not None:
        return config.preserve_scale
    count = prompts + int(config.preserve_empty)
    return max(0.1, 1.0 / count) if count else 1.0


def concept_prompt_pairs(concepts: list[Concept], config: UCEConfig) -> tuple[list[str], list[str]]:
    """Erased prompts and, position by position, the guide prompts they should become."""
    sources, targets = [], []
    for concept in concepts:
        target = guide_of(concept, config.guide)
        templated = config.guide_templates == "always" or (config.guide_templates == "when_nonempty" and target.strip())
        for template in config.prompt_templates:
            sources.append(template.format(concept.text))
            targets.append(template.format(target) if templated else target)
    return sources, targets


def guide_of(concept: Concept, guide: str) -> str:
    """The concept's own target if it names one (``"cat->dog"``), else the config's guide."""
    return guide if concept.target is None else concept.target


def preserved_prompts(concepts: list[Concept], config: UCEConfig) -> list[str]:
    """``preserve``, then ``preserve_file``'s prompts that are not erased concepts (blank
    prompts dropped: the empty prompt is ``preserve_empty``'s)."""
    prompts = [p for p in config.preserve if p.strip()]
    if config.preserve_file is not None:
        erased = {c.text.strip().lower() for c in concepts}
        prompts += [p for p in read_prompt_file(Path(config.preserve_file).expanduser(), config.preserve_column)
                    if p.strip().lower() not in erased]
    return prompts


def read_prompt_file(path: Path, column: str) -> list[str]:
    """Prompts from a text file (one a line) or a CSV column (each value once, in order).

    Args:
        path: the file.
        column: the CSV column to read.
    """
    if not path.is_file():
        raise ErasureError(f"preserve_file {str(path)!r} not found: give a text file (one prompt a line) or a CSV")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".csv":
        return [line.strip() for line in text.splitlines() if line.strip()]
    reader = csv.DictReader(text.splitlines())
    if column not in (reader.fieldnames or []):
        raise ErasureError(
            f"{path} has no column {column!r} (columns: {', '.join(reader.fieldnames or [])}): "
            "set preserve_column to the column of prompts"
        )
    return list(dict.fromkeys(row[column].strip() for row in reader if row[column] and row[column].strip()))


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
    adapter: StableDiffusionAdapter, prompts: list[str], config: UCEConfig, empty_weight: float = 1.0
) -> GramAccumulator:
    """Grams of the preserved prompts' tokens (``preserve_tokens`` of each), and of the
    empty prompt's when ``preserve_empty``, streamed over the prompts.

    Args:
        adapter: encodes.
        prompts: the preserved prompts (``preserved_prompts``).
        config: ``preserve_empty``, ``preserve_tokens``, ``token_choice``.
        empty_weight: how many times the empty prompt counts (RECE's ``empty_per_concept``).
    """
    grams = GramAccumulator(adapter.text_dim, adapter.device)
    if config.preserve_empty:
        _add_preserved(grams, adapter.encode([""]), config, empty_weight)
    for _, embeddings in adapter.encode_in_batches(prompts):
        _add_preserved(grams, embeddings, config)
    return grams


def _add_preserved(grams: GramAccumulator, embeddings, config: UCEConfig, weight: float = 1.0) -> None:
    length = embeddings.hidden.shape[1]
    for i, count in enumerate(embeddings.token_counts.tolist()):
        span = slice(0, length)
        if config.preserve_tokens == "erased_span":
            span, _ = token_spans(count, count, length, config.token_choice)
        grams.add(embeddings.hidden[i, span], weight=weight)
