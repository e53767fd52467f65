"""Attacks that measure how recoverable an erased concept is.

``closed_form_embedding`` is RECE's adversarial embedding (Gong et al., ECCV 2024): the
token vectors that make an erased model's cross-attention reproduce what the original
model computed for the concept. It needs no optimisation, so it is a cheap robustness
check for a model erased by any method: generate from it and score the images.
"""

from __future__ import annotations

import torch

from .adapters import PromptEmbeddings, adapter_for
from .closed_form import adversarial_embedding
from .errors import ErasureError
from .weights import EditedWeights

DEFAULT_REG = 1e-3  # the regularisation of ``closed_form_embedding`` unless told otherwise


def closed_form_embedding(
    pipe, concept: str | list[str], erased: EditedWeights | None = None, original: dict[str, torch.Tensor] | None = None,
    reg: float = DEFAULT_REG,
) -> PromptEmbeddings:
    """The adversarial embedding of ``concept`` against an erased model.

    Give either the base pipeline and the ``erased`` weights, or an already erased
    pipeline and the ``original`` cross-attention weights (``{param_name: tensor}``).
    Projections the erasure did not change count with their base values (for ESD-u,
    which leaves cross-attention alone, the result is close to the concept itself).

    Args:
        pipe: a Stable Diffusion pipeline (base or erased, see above).
        concept: the concept prompt, e.g. ``"nudity"``, or a list of prompts (one
            embedding each, from one solve).
        erased: weights from ``erasure.erase`` / ``EditedWeights.load``.
        original: base cross-attention weights when ``pipe`` is already erased.
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
    empty prompt; zeros for SDXL's ``force_zeros_for_empty_prompt``)."""
    adapter = adapter_for(pipe)
    uncond = adapter.negative_embeddings(len(embedding))
    images = []
    for seed in seeds:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        inputs = adapter.pipeline_inputs(embedding, uncond)
        images.extend(pipe(**inputs, generator=generator, **pipe_kwargs).images)
    return images
