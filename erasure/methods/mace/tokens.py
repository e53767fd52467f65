"""Token positions of MACE's prompts: which positions of a concept prompt co-exist with
its mapped prompt (stage 1), and which hold the concept (stage 2's loss and masks)."""

from __future__ import annotations

import torch

from ...adapters import StableDiffusionAdapter
from ...errors import ErasureError


def coexisting_positions(source: list[int], target: list[int], length: int) -> tuple[list[int], list[int]]:
    """Positions shared by a concept prompt and its mapped prompt, paired one to one.

    The shared prefix (start token included), the shared suffix (end token included)
    and then the padding, paired from the end of each prompt on: every position except
    the words that differ (the concept and its mapping).

    Args:
        source: the concept prompt's token ids (start and end tokens, no padding).
        target: the mapped prompt's.
        length: the padded sequence length (77).
    """
    prefix = 0
    while prefix < min(len(source), len(target)) and source[prefix] == target[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(source), len(target)) - prefix and source[-1 - suffix] == target[-1 - suffix]:
        suffix += 1
    padding = length - max(len(source), len(target))

    def positions(ids: list[int]) -> list[int]:
        n = len(ids)
        return list(range(prefix)) + list(range(n - suffix, n)) + list(range(n, n + padding))

    return positions(source), positions(target)


def concept_positions(adapter: StableDiffusionAdapter, prompt: str, concept: str, end_tokens: str, length: int) -> torch.Tensor:
    """``(length,)`` booleans: the concept's tokens in ``prompt`` and the chosen end positions.

    Args:
        adapter: tokenises.
        prompt: a prompt containing the concept.
        concept: the concept's text.
        end_tokens: ``all`` (end token and padding), ``first`` (the end token) or ``none``.
        length: the padded sequence length.
    """
    ids = adapter.token_ids(prompt)
    word = adapter.concept_token_ids(concept)
    starts = [i for i in range(len(ids) - len(word) + 1) if ids[i : i + len(word)] == word]
    if not word or not starts:
        raise ErasureError(f"the concept {concept!r} is not found in the prompt {prompt!r}: check the templates")
    mask = torch.zeros(length, dtype=torch.bool)
    for start in starts:
        mask[start : start + len(word)] = True
    end = len(ids) - 1
    if end_tokens == "all":
        mask[end:] = True
    elif end_tokens == "first":
        mask[end] = True
    return mask
