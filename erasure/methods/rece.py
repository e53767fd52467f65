"""RECE: Reliable and Efficient Concept Erasure (Gong, Chen, Wei, Chen, Jia; ECCV 2024).

Start from UCE, then for a few epochs:

1. find, in closed form, the embedding ``c'`` that makes the *current* edited
   cross-attention reproduce what the original computed for the concept (paper Eq. 6,
   ``erasure.closed_form.adversarial_embedding``);
2. edit again with UCE's formula: ``c'`` (all 77 token vectors) must now produce the
   guide's keys/values under the current weights, anchored at the current weights,
   with the same preserved prompts (paper Eq. 7; ``lam`` 0.1, ``s_p`` 0.1);
3. validate the epoch on generated images and keep the best one.

Deviations: validation scores the erased concept on a few generated images with the
project's own scorers (the world classifier for mini-sd, NudeNet for nudity, CLIP
zero-shot otherwise) instead of the authors' per-task scripts; ties keep the earlier
epoch (the smaller edit). ``validate="none"`` keeps the last epoch, as the paper's
fixed-epoch settings do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterator, Literal

import torch
from tqdm.auto import tqdm

from ..adapters import StableDiffusionAdapter, adapter_for
from ..closed_form import GramAccumulator, adversarial_embedding
from ..concepts import Concept
from ..weights import EditedWeights
from . import uce


@dataclass
class RECEConfig:
    """RECE settings; defaults from the paper (Sec. 4, "easy objects" row of its settings).

    Attributes:
        guide, preserve, token_choice: as in ``UCEConfig``, for the initial UCE edit
            and for the preserved prompts of every epoch.
        uce_lam, uce_erase_scale, uce_preserve_scale: the initial UCE edit (paper: 0.5, 1, 1).
        epochs: adversarial epochs (nudity 3, unsafe 2, artists and objects 1).
        reg: ``regular_scale`` of the adversarial embedding (nudity, unsafe and easy
            objects 0.1; artists and hard objects 1e-3).
        lam: anchor weight of each epoch's re-edit (paper: 0.1).
        erase_scale: ``s_e`` of the re-edit (paper: 1).
        preserve_scale: ``s_p`` of the re-edit (paper: 0.1).
        validate: how to score an epoch: ``auto`` picks the world classifier for the
            bundled mini-sd, NudeNet for nudity, CLIP zero-shot otherwise; ``none`` skips.
        validation_seeds: images per concept prompt when validating.
    """

    guide: str = ""
    preserve: list[str] = field(default_factory=list)
    token_choice: uce.TokenChoice = "from_last_subject"
    uce_lam: float = 0.5
    uce_erase_scale: float = 1.0
    uce_preserve_scale: float | None = 1.0
    epochs: int = 1
    reg: float = 0.1
    lam: float = 0.1
    erase_scale: float = 1.0
    preserve_scale: float = 0.1
    validate: Literal["auto", "none", "world", "nudenet", "clip"] = "auto"
    validation_seeds: int = 4


def erase(pipe, concepts: list[Concept], config: RECEConfig) -> EditedWeights:
    """UCE, then ``config.epochs`` adversarial re-edits; the best-validated epoch is returned."""
    adapter = adapter_for(pipe)
    original = {name: w.detach().clone() for name, w in adapter.cross_attention_weights().items()}
    scorer = validation_scorer(pipe, concepts, config)
    history, best = [], None
    for epoch, weights in tqdm(rece_epochs(adapter, concepts, config), total=config.epochs + 1, desc="rece"):
        if epoch == 0:
            continue  # the UCE starting point is not a candidate: RECE keeps an adversarial epoch
        score = scorer(weights) if scorer else None
        history.append({"epoch": epoch, "score": score})
        # Without validation the last epoch wins; with it, the lowest score (ties: the smaller edit).
        if best is None or scorer is None or score < best[1]:
            best = (epoch, score, weights)
    epoch, score, weights = best
    return EditedWeights.from_edit(
        original,
        weights,
        method="rece",
        concepts=[str(c) for c in concepts],
        config=dataclasses.asdict(config),
        base_model=str(pipe.name_or_path),
        extra={"chosen_epoch": epoch, "chosen_score": score, "validation": config.validate, "epochs": history},
    )


def rece_epochs(
    adapter: StableDiffusionAdapter, concepts: list[Concept], config: RECEConfig
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield ``(0, UCE weights)`` then ``(epoch, weights)`` after each adversarial re-edit."""
    original = {name: w.detach().clone() for name, w in adapter.cross_attention_weights().items()}
    uce_config = uce.UCEConfig(
        guide=config.guide, preserve=config.preserve, lam=config.uce_lam, erase_scale=config.uce_erase_scale,
        preserve_scale=config.uce_preserve_scale, token_choice=config.token_choice,
    )
    sources, targets = uce.concept_prompt_pairs(concepts, uce_config)
    erased = uce.aligned_token_grams(adapter, sources, targets, config.token_choice)
    preserved = uce.preservation_grams(adapter, config.preserve, config.token_choice)
    current = uce.solve_uce(original, original, erased, preserved, uce_config)
    yield 0, current

    concept_tokens = adapter.encode([c.text for c in concepts]).hidden
    target_tokens = adapter.encode([uce.guide_of(c, config.guide) for c in concepts]).hidden
    reedit = dataclasses.replace(
        uce_config, lam=config.lam, erase_scale=config.erase_scale, preserve_scale=config.preserve_scale
    )
    for epoch in range(1, config.epochs + 1):
        adversarial = GramAccumulator(adapter.text_dim, adapter.device)
        for tokens, target in zip(concept_tokens, target_tokens):
            adversarial.add(adversarial_embedding(current, original, tokens, config.reg), target)
        current = uce.solve_uce(current, current, adversarial, preserved, reedit)
        yield epoch, current


def validation_scorer(pipe, concepts: list[Concept], config: RECEConfig):
    """A function ``weights -> score`` (lower = better erased), or ``None`` for ``validate="none"``."""
    if config.validate == "none":
        return None
    from ..eval.validation import erased_concept_scorer

    return erased_concept_scorer(pipe, [c.text for c in concepts], config.validate, config.validation_seeds)
