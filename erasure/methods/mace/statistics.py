"""MACE's text-space statistics: Gram sums over prompt tokens, and a disk cache for the
large ones (the general and domain sets' ``P2``, ``D2``), keyed by what the text encoder
computes and by the prompts, so the same model and captions never pay twice."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from ...adapters import StableDiffusionAdapter
from ...atomic import atomic_write
from ...closed_form import SOLVE_DTYPE, GramAccumulator, MappingTerm
from .prompts import ConceptPrompts
from .tokens import coexisting_positions

if TYPE_CHECKING:
    from . import MACEConfig

_CACHE_VERSION = "1"
_PROBE_PROMPTS = ["a photo of a cat on a sofa", ""]


def coexisting_grams(adapter: StableDiffusionAdapter, items: list[ConceptPrompts]) -> GramAccumulator:
    """``sum e_f e_f^T`` (keys) and ``sum e_g e_f^T`` (cross) over every concept's prompts."""
    grams = GramAccumulator(adapter.text_dim, adapter.device)
    for item in items:
        source, target = adapter.encode(item.prompts).hidden, adapter.encode(item.mapped).hidden
        for i, (prompt, mapped) in enumerate(zip(item.prompts, item.mapped)):
            src, tgt = coexisting_positions(adapter.token_ids(prompt), adapter.token_ids(mapped), source.shape[1])
            grams.add(source[i, src], target[i, tgt])
    return grams


def all_token_grams(adapter: StableDiffusionAdapter, prompts: list[str]) -> GramAccumulator:
    """``sum e e^T`` over every token (padding included) of ``prompts``, streamed."""
    grams = GramAccumulator(adapter.text_dim, adapter.device)
    for _, embeddings in adapter.encode_in_batches(prompts):
        grams.add(embeddings.hidden)
    grams.count = len(prompts)  # prompts, not tokens: what general_equivalent_captions rescales
    return grams


def cached_grams(adapter: StableDiffusionAdapter, prompts: list[str], kind: str, cache: Path) -> GramAccumulator:
    """``all_token_grams`` of ``prompts``, read from or written to the ``cache`` folder.

    Args:
        adapter: encodes.
        prompts: the caption or domain prompts.
        kind: ``"general"`` or ``"domain"`` (the file's name starts with it).
        cache: the cache folder.
    """
    key = hashlib.sha256((encoder_key(adapter) + "\n" + "\n".join(prompts)).encode()).hexdigest()[:24]
    path = cache / f"{kind}-{key}.safetensors"
    if path.is_file():
        stored = load_file(str(path))
        grams = GramAccumulator(adapter.text_dim, adapter.device)
        grams.keys = stored["gram"].to(adapter.device, SOLVE_DTYPE)
        grams.cross = grams.keys.clone()
        grams.count = int(stored["count"])
        return grams
    grams = all_token_grams(adapter, prompts)
    tensors = {"gram": grams.keys.cpu().contiguous(), "count": torch.tensor(grams.count)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"kind": kind, "prompts": str(len(prompts))}))
    return grams


def cache_root(cache_dir: str | None) -> Path:
    """The cache folder: the configured one, or ``~/.cache/erasure/mace``."""
    return Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache" / "erasure" / "mace"


def encoder_key(adapter: StableDiffusionAdapter) -> str:
    """A fingerprint of what the text encoder computes: its outputs for fixed prompts
    (rounded), so every family, encoder and tokenizer is covered alike."""
    hidden = adapter.encode(_PROBE_PROMPTS).hidden.float().cpu()
    digest = hashlib.sha256(torch.round(hidden * 1000).to(torch.int64).numpy().tobytes())
    digest.update(f"{_CACHE_VERSION}:{adapter.text_dim}:{tuple(hidden.shape)}".encode())
    return digest.hexdigest()


def preservation_terms(original, general, domain, scale: float, config: "MACEConfig") -> list[MappingTerm]:
    """``s (P1 + w D1)`` and ``s (P2 + w D2)`` as terms mapping to the original weights.

    Args:
        original: ``W0`` by name (the preserved outputs' source).
        general: ``P2`` or ``None``.
        domain: ``D2`` or ``None``.
        scale: ``s`` (stage 1) or ``s_f`` (stage 3).
        config: ``general_equivalent_captions`` and ``domain_weight``.
    """
    terms = []
    if general is not None and scale > 0:
        size = 1.0
        if config.general_equivalent_captions is not None:
            size = config.general_equivalent_captions / max(1, general.count)
        terms.append(MappingTerm(original, general, scale * size))
    if domain is not None and scale > 0:
        terms.append(MappingTerm(original, domain, scale * config.domain_weight))
    return terms
