"""Cross-attention probabilities of a diffusers UNet, captured layer by layer.

Which image regions attend to which prompt tokens is read from the ``attn2`` blocks'
attention probabilities ``softmax(Q K^T / sqrt(d))``. MACE uses them twice: the base
model's attention to a concept's tokens is the default segmentation mask of the
concept's training images, and its stage-2 loss is the attention mass those tokens
receive inside the mask.

``observe_cross_attention`` swaps every cross-attention processor for one that computes
attention explicitly, exactly as diffusers' ``AttnProcessor`` does, and hands the
probabilities to a callback; the original processors come back on exit, also on error.
Gradients flow through the probabilities, so a loss built from them trains whatever
produces the queries and keys (e.g. LoRA layers on ``to_k``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

# observe(layer_name, probs): probs is (batch, heads, pixels, tokens), softmax over tokens.
Observer = Callable[[str, torch.Tensor], None]


class ObservingAttnProcessor:
    """diffusers' plain attention processor, plus a callback that sees the probabilities."""

    def __init__(self, name: str, observe: Observer):
        self.name = name
        self.observe = observe

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))
        probs = attn.get_attention_scores(query, key, attention_mask)
        # head_to_batch_dim orders the first axis batch-major: (batch * heads).
        self.observe(self.name, probs.view(batch_size, attn.heads, *probs.shape[1:]))

        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def observe_cross_attention(modules: dict[str, nn.Module], observe: Observer) -> Iterator[None]:
    """Within the block, every forward pass through ``modules`` calls ``observe``.

    Args:
        modules: diffusers ``Attention`` blocks by name (``adapter.cross_attention_modules()``).
        observe: ``observe(name, probs)`` with ``probs`` of shape ``(batch, heads, pixels, tokens)``.
    """
    originals = {name: module.processor for name, module in modules.items()}
    try:
        for name, module in modules.items():
            module.set_processor(ObservingAttnProcessor(name, observe))
        yield
    finally:
        for name, module in modules.items():
            module.set_processor(originals[name])


def feature_size(pixels: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of a layer's feature map from its pixel count and the latents' size.

    Each UNet level halves both sides, so the ratio of areas is a power of four.
    """
    height, width = latent_size
    factor = round(math.sqrt(height * width / pixels))
    size = (math.ceil(height / factor), math.ceil(width / factor))
    if size[0] * size[1] != pixels:
        raise ValueError(f"a layer with {pixels} pixels does not fit latents of size {latent_size}")
    return size


def token_attention(probs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Attention each pixel pays to the selected tokens, averaged over heads.

    Args:
        probs: ``(batch, heads, pixels, tokens)``.
        positions: ``(batch, tokens)`` booleans, the tokens to sum over.

    Returns:
        ``(batch, pixels)``.
    """
    selected = probs * positions[:, None, None, :].to(probs.dtype)
    return selected.sum(-1).mean(1)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A ``(batch, 1, H, W)`` mask in [0, 1] as ``(batch, pixels)`` booleans at ``size``
    (nearest neighbour, then > 0.5, as the MACE authors resize their SAM masks)."""
    resized = F.interpolate(mask.float(), size=size, mode="nearest")
    return resized.flatten(1) > 0.5


class AttentionMaps:
    """Observer that averages, over layers and calls, the attention paid to chosen tokens.

    Each layer's map is upsampled to the latents' size before averaging, so that coarse
    and fine layers count alike.
    """

    def __init__(self, positions: torch.Tensor, latent_size: tuple[int, int]):
        self.positions = positions
        self.latent_size = latent_size
        self.total: torch.Tensor | None = None
        self.count = 0

    def __call__(self, name: str, probs: torch.Tensor) -> None:
        maps = token_attention(probs.detach().float(), self.positions.to(probs.device))
        height, width = feature_size(maps.shape[1], self.latent_size)
        maps = maps.view(-1, 1, height, width)
        maps = F.interpolate(maps, size=self.latent_size, mode="bilinear", align_corners=False)
        self.total = maps if self.total is None else self.total + maps
        self.count += 1

    def mean(self) -> torch.Tensor:
        """``(batch, 1, H, W)`` average map at the latents' resolution."""
        if self.total is None:
            raise RuntimeError("no cross-attention was observed: run the UNet inside observe_cross_attention")
        return self.total / self.count
