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
fixed-epoch settings do. The scorer is passed in (``erasure.methods`` builds it from the
evaluator), so this module does not depend on the evaluator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Iterator, Literal

import torch
from tqdm.auto import tqdm

from ..adapters import StableDiffusionAdapter, adapter_for
from ..closed_form import GramAccumulator, adversarial_embedding
from ..concepts import Concept
from ..config import MethodConfig, setting
from ..edit import Edit
from ..errors import ErasureError
from ..training import RunOptions
from .uce import UCEConfig, aligned_token_grams, concept_prompt_pairs, guide_of, preservation_grams, solve_uce

# weights -> how much of the erased concept is left (lower is better erased)
Scorer = Callable[[dict[str, torch.Tensor]], float]


@dataclass
class RECEConfig(MethodConfig):
    """RECE settings; defaults from the paper (Sec. 4, "easy objects" row of its settings).

    Attributes:
        uce: the initial UCE edit (paper: lam 0.5, scales 1). Its ``guide``,
            ``preserve``, ``token_choice`` and ``prompt_templates`` also serve every
            epoch's re-edit.
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

    uce: UCEConfig = field(default_factory=UCEConfig)
    epochs: int = setting(1, min=1)
    reg: float = setting(0.1, min=0)
    lam: float = setting(0.1, above=0)
    erase_scale: float = setting(1.0, above=0)
    preserve_scale: float = setting(0.1, min=0)
    validate: Literal["auto", "none", "world", "nudenet", "clip"] = "auto"
    validation_seeds: int = setting(4, min=1)


def erase(
    pipe, concepts: list[Concept], config: RECEConfig, run: RunOptions = RunOptions(), scorer: Scorer | None = None
) -> Edit:
    """UCE, then ``config.epochs`` adversarial re-edits; the best-validated epoch is returned.

    Args:
        pipe: a Stable Diffusion pipeline (SD 1.x, 2.x or SDXL); left unchanged.
        concepts: the concepts to erase.
        config: ``RECEConfig``.
        run: unused (closed-form epochs have nothing to checkpoint).
        scorer: scores an epoch's cross-attention weights, lower = better erased;
            needed unless ``config.validate`` is ``"none"`` (``erasure.erase`` builds it).

    Returns:
        An ``Edit`` of every cross-attention key/value projection; ``extra`` records
        every epoch's score and the chosen epoch.
    """
    if config.validate == "none":
        scorer = None
    elif scorer is None:
        raise ErasureError(
            f"RECE with validate={config.validate} needs a scorer: call it through erasure.erase, pass scorer=, "
            "or set validate=none"
        )
    adapter = adapter_for(pipe)
    original = {name: w.detach().clone() for name, w in adapter.cross_attention_weights().items()}
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
    extra = {"chosen_epoch": epoch, "chosen_score": score, "validation": config.validate, "epochs": history}
    return Edit.of_unet(original, weights, extra)


def rece_epochs(
    adapter: StableDiffusionAdapter, concepts: list[Concept], config: RECEConfig
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield ``(0, UCE weights)`` then ``(epoch, weights)`` after each adversarial re-edit."""
    original = {name: w.detach().clone() for name, w in adapter.cross_attention_weights().items()}
    first = config.uce
    sources, targets = concept_prompt_pairs(concepts, first)
    erased = aligned_token_grams(adapter, sources, targets, first.token_choice)
    preserved = preservation_grams(adapter, first.preserve, first.token_choice)
    current = solve_uce(original, original, erased, preserved, first)
    yield 0, current

    concept_tokens = adapter.encode([c.text for c in concepts]).hidden
    target_tokens = adapter.encode([guide_of(c, first.guide) for c in concepts]).hidden
    reedit = dataclasses.replace(first, lam=config.lam, erase_scale=config.erase_scale, preserve_scale=config.preserve_scale)
    for epoch in range(1, config.epochs + 1):
        adversarial = GramAccumulator(adapter.text_dim, adapter.device)
        for tokens, target in zip(concept_tokens, target_tokens):
            adversarial.add(adversarial_embedding(current, original, tokens, config.reg), target)
        current = solve_uce(current, current, adversarial, preserved, reedit)
        yield epoch, current
