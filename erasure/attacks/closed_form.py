"""closed-form: RECE's adversarial embedding (Gong et al., ECCV 2024, Eq. 6).

The token vectors ``c'`` that make the erased model's cross-attention keys and values
reproduce what the base model computed for the prompt's vectors ``c``:

    c' = (reg I + sum_l W'_l^T W'_l)^-1 (sum_l W'_l^T W0_l) c

over every key/value projection ``l`` (``erasure.closed_form.adversarial_embedding``).
It needs no optimisation, so it is a cheap robustness check of any erasure. It reaches
only what the keys and values do: projections the erasure left alone count with their
base values, so against an erasure of other UNet parameters (ESD-u) ``c'`` is close to
``c`` itself; ``c`` is the attacked pipeline's own encoding of the prompt, so against a
text-encoder edit (AdvUnlearn) the keys and values are the base's and ``c' = c`` too.
(Encoding with the base text encoder instead would be "swap the text encoder back",
which undoes any text-encoder edit by construction.) The input-space attacks of this
package reach those edits.

``reg``: RECE uses 0.1 for nudity and 1e-3 for artists and hard objects
(``configs/rece/*.yaml``); the attack's default is 1e-3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapters import PromptEmbeddings, adapter_for
from ..closed_form import adversarial_embedding
from ..config import setting
from ..errors import ErasureError
from .base import Attack, AttackConfig, AttackResult, AttackTarget, Row, Stopwatch

DEFAULT_REG = 1e-3


@dataclass
class ClosedFormConfig(AttackConfig):
    """RECE's closed-form embedding.

    Attributes:
        reg: the solve's regularisation ``regular_scale`` (RECE: 1e-3 artists and hard
            objects, 0.1 nudity); larger keeps ``c'`` small.
    """

    reg: float = setting(DEFAULT_REG, min=0)


class ClosedFormAttack(Attack):
    name = "closed-form"
    Config = ClosedFormConfig
    scope = "row"
    output = "embedding"
    cached = False
    seeded = False

    def run(self, target: AttackTarget, rows: list[Row]) -> list[AttackResult]:
        base = target.require_base(self.name)
        watch = Stopwatch()
        prompts = [row.prompt for row in rows]
        embeddings = closed_form_embedding(target.pipe, prompts, original=base.tensors("unet"), reg=self.config.reg)
        share = watch.share(len(rows))
        return [AttackResult(row.index, row.prompt, embedding=embeddings.select(slice(i, i + 1)), steps=1, **share)
                for i, row in enumerate(rows)]


def closed_form_embedding(
    pipe, concept: str | list[str], erased=None, original: dict[str, torch.Tensor] | None = None,
    reg: float = DEFAULT_REG,
) -> PromptEmbeddings:
    """The adversarial embedding of ``concept`` against an erased model.

    Give either the base pipeline and the ``erased`` weights, or an already erased
    pipeline and the ``original`` values of the UNet parameters the erasure changed
    (``{param_name: tensor}``; other parameters are ignored). Projections the erasure
    did not change count with their current values.

    Args:
        pipe: a Stable Diffusion pipeline (base or erased, see above).
        concept: the concept prompt, e.g. ``"nudity"``, or a list of prompts (one
            embedding each, from one solve).
        erased: ``EditedWeights`` from ``erasure.erase`` / ``EditedWeights.load``.
        original: base values when ``pipe`` is already erased.
        reg: RECE's ``regular_scale``.

    Returns:
        ``PromptEmbeddings`` to pass through ``adapter_for(pipe).pipeline_inputs``.
    """
    if (erased is None) == (original is None):
        raise ErasureError("give exactly one of erased= (with the base pipeline) or original= (with the erased one)")
    adapter = adapter_for(pipe)
    live = {name: w.detach() for name, w in adapter.cross_attention_weights().items()}
    if erased is not None:
        base, current = live, {name: erased.tensors.get(name, w) for name, w in live.items()}
    else:
        base, current = {name: original.get(name, w) for name, w in live.items()}, live
    prompt = adapter.encode([concept] if isinstance(concept, str) else list(concept))
    tokens = prompt.hidden.reshape(-1, prompt.hidden.shape[-1])  # the solve maps every token vector alike
    hidden = adversarial_embedding(current, base, tokens, reg).reshape(prompt.hidden.shape)
    return PromptEmbeddings(hidden, prompt.token_counts, prompt.pooled)


@torch.no_grad()
def generate_from_embedding(pipe, embedding: PromptEmbeddings, seeds: list[int], **pipe_kwargs):
    """Images from an embedding (one per seed), with the negative a prompt would get (the
    empty prompt; zeros for SDXL's ``force_zeros_for_empty_prompt``).

    Args:
        pipe: the pipeline (holding the weights to generate with).
        embedding: from ``closed_form_embedding``.
        seeds: one image per seed.
        **pipe_kwargs: more arguments of the pipeline call (steps, guidance, size).
    """
    adapter = adapter_for(pipe)
    uncond = adapter.negative_embeddings(len(embedding))
    images = []
    for seed in seeds:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        inputs = adapter.pipeline_inputs(embedding, uncond)
        images.extend(pipe(**inputs, generator=generator, **pipe_kwargs).images)
    return images
