"""Stage 2 of MACE: one LoRA per concept on ``attn2.to_k/to_v`` of the refined UNet,
trained to remove the attention the concept's tokens receive inside the concept's mask
(paper Eq. 8), on images of the concept made by the base model (or given) and masks of
where the concept is. Finished LoRAs are checkpointed concept by concept."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ...attention import feature_size, observe_cross_attention, resize_mask
from ...concept_images import (
    attention_masks,
    decode_latents,
    encode_images,
    folder_masks,
    generate_latents,
    grounded_sam_masks,
    read_images,
)
from ...errors import ErasureError
from ...generation import generation_settings
from ...training import Checkpoint, TrainingState, finite_value, run_steps, swapped_parameters, training_flags_restored
from .prompts import ConceptPrompts
from .tokens import concept_positions

if TYPE_CHECKING:
    from . import MACEConfig

ADAPTER_NAME = "mace"
LoRA = dict[str, tuple[torch.Tensor, torch.Tensor]]  # weight name -> (B * scaling, A)


@dataclass
class TrainingData:
    """A concept's training latents (UNet space) and masks (``None``: whole image)."""

    latents: torch.Tensor
    masks: torch.Tensor | None


def concept_loras(
    pipe, adapter, refined, items: list[ConceptPrompts], config: "MACEConfig", checkpoint: Checkpoint, every: int
) -> tuple[list[LoRA], list[list[float]]]:
    """Every concept's LoRA, one after the other; a run interrupted between concepts
    resumes with the ones already trained.

    Args:
        pipe, adapter: the pipeline and its adapter (restored after each concept).
        refined: ``W'`` of stage 1, swapped in while training.
        items: every concept's prompts, in order (concept ``i`` is seeded ``seed + i``).
        config: the MACE settings.
        checkpoint: this run's checkpoint.
        every: checkpoint every N concepts (0: only on Ctrl-C or a non-finite loss).

    Returns:
        Per concept, its LoRA and its first and last loss.
    """
    state = TrainingState()

    def next_concept(index: int) -> list[float]:
        lora, losses = concept_lora(pipe, adapter, refined, items[index], config, seed=config.seed + index)
        for name, (up, down) in lora.items():
            state.tensors[f"{index}/{name}/up"], state.tensors[f"{index}/{name}/down"] = up, down
        return losses

    run_steps(next_concept, state, len(items), checkpoint, every, unit="concept")
    loras: list[dict] = [{} for _ in items]
    for key in state.tensors:
        index, rest = key.split("/", 1)
        name, part = rest.rsplit("/", 1)
        if part == "up":
            loras[int(index)][name] = (state.tensors[key], state.tensors[f"{index}/{name}/down"])
    return loras, state.history


def concept_lora(pipe, adapter, refined, item: ConceptPrompts, config: "MACEConfig", seed: int) -> tuple[LoRA, list]:
    """Train concept ``item``'s LoRA on the refined UNet; the pipe is restored after.

    Returns:
        ``({projection weight name: (B, A)}, [first loss, last loss])`` with ``B A`` the
        weight update (scale folded into ``B``); an empty dict when ``train_steps`` is 0.
    """
    if config.train_steps == 0:
        return {}, []
    generator = torch.Generator().manual_seed(seed)
    data = training_data(pipe, adapter, item, config, generator)
    with swapped_parameters(adapter.unet, refined), torch.random.fork_rng(devices=_cuda(adapter)):
        torch.manual_seed(seed)  # peft's LoRA initialisation draws from the global generator
        with temporary_lora(adapter, config.lora_rank) as layers:
            losses = train_lora(adapter, layers, data, item, config, generator)
            lora = {f"{name}.weight": lora_factors(layer) for name, layer in layers.items()}
    return lora, [losses[0], losses[-1]]


def train_lora(adapter, layers: dict, data: TrainingData, item: ConceptPrompts, config: "MACEConfig", generator) -> list[float]:
    """The attention-map loss, one image and one prompt per step (batch 1, AdamW)."""
    cond = adapter.encode(item.prompts)
    length = cond.hidden.shape[1]
    positions = torch.stack(
        [concept_positions(adapter, p, item.concept.text, config.end_tokens, length) for p in item.prompts]
    ).to(adapter.device)
    params = [p for layer in layers.values() for p in lora_parameters(layer)]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = adapter.noise_scheduler()
    weights = timestep_weights(scheduler.config.num_train_timesteps, config.importance_sampling)
    modules = adapter.cross_attention_modules()
    hint = f"lower learning_rate (now {config.learning_rate:g})"
    losses = []
    for _ in range(config.train_steps):
        image = int(torch.randint(len(data.latents), (1,), generator=generator))
        prompt = int(torch.randint(len(item.prompts), (1,), generator=generator))
        t = torch.multinomial(weights, 1, generator=generator).to(adapter.device)
        latents = data.latents[image : image + 1].to(adapter.device)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        mask = None if data.masks is None else data.masks[image : image + 1].to(adapter.device)
        loss = MaskedAttentionLoss(positions[prompt : prompt + 1], mask, tuple(latents.shape[-2:]), config.attention_loss)
        with observe_cross_attention(modules, loss):
            adapter.predict_noise(scheduler.add_noise(latents, noise, t), t, cond.select(slice(prompt, prompt + 1)))
        losses.append(finite_value(loss.total.detach(), hint))
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return losses


class MaskedAttentionLoss:
    """Observer summing, over cross-attention layers, the attention that the concept's
    token positions receive at pixels inside the mask (Eq. 8)."""

    def __init__(self, positions: torch.Tensor, mask: torch.Tensor | None, latent_size, kind: str = "squared"):
        self.positions, self.mask, self.latent_size, self.kind = positions, mask, latent_size, kind
        self.total = torch.zeros(())

    def __call__(self, name: str, probs: torch.Tensor) -> None:
        selected = probs.float() * self.positions[:, None, None, :].float()
        if self.mask is not None:
            inside = resize_mask(self.mask, feature_size(probs.shape[2], self.latent_size))
            selected = selected * inside[:, None, :, None].float()
        value = selected.pow(2).sum() if self.kind == "squared" else selected.norm()
        self.total = self.total.to(value.device) + value


def timestep_weights(num_timesteps: int, importance_sampling: bool) -> torch.Tensor:
    """Sampling weights of the training timesteps: concept-focal (paper Sec. 3.3) or uniform."""
    t = torch.arange(num_timesteps, dtype=torch.float64)
    if not importance_sampling:
        return torch.ones_like(t)
    return torch.sigmoid(0.05 * (t - 200)) - torch.sigmoid(0.05 * (t - 400))


@contextmanager
def temporary_lora(adapter, rank: int):
    """PEFT LoRA layers on every ``attn2.to_k/to_v``, removed afterwards with the UNet's
    own training flags restored (PEFT freezes everything else)."""
    from peft import LoraConfig

    unet = adapter.unet
    names = list(adapter.cross_attention_projections())
    lora_config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=names)
    with training_flags_restored(unet):
        unet.add_adapter(lora_config, adapter_name=ADAPTER_NAME)
        try:
            layers = {name: unet.get_submodule(name) for name in names}
            for layer in layers.values():
                for p in lora_parameters(layer):  # train in float32 whatever the UNet's dtype
                    p.data = p.data.float()
            yield layers
        finally:
            unet.unload_lora()


def lora_parameters(layer) -> list[torch.nn.Parameter]:
    return [layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight]


def lora_factors(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B * scaling, A)``: the layer's weight update is their product."""
    up, down = layer.lora_B[ADAPTER_NAME].weight, layer.lora_A[ADAPTER_NAME].weight
    return (up.detach().float() * layer.scaling[ADAPTER_NAME]).clone(), down.detach().float().clone()


def _cuda(adapter) -> list:
    return [adapter.device] if adapter.device.type == "cuda" else []


# ---- the training data: images of the concept and their masks ----------------------------


def training_data(pipe, adapter, item: ConceptPrompts, config: "MACEConfig", generator) -> TrainingData:
    """Latents of the concept's images (generated by the base model, or the user's) and masks."""
    concept = item.concept.text
    images = None
    with sampling_scheduler(pipe, config.generation_scheduler):
        settings = generation_settings(pipe, num_inference_steps=config.generation_steps,
                                       guidance_scale=config.generation_guidance, resolution=config.resolution)
        if config.data_dir is not None:
            folder = Path(config.data_dir).expanduser() / concept
            if not folder.is_dir():
                raise ErasureError(f"no training images for {concept!r}: expected a folder {folder}")
            images = read_images(folder)
            latents = encode_images(pipe, images, settings.resolution)
        else:
            prompt = config.image_prompt.format(concept)
            latents = generate_latents(pipe, prompt, config.images_per_concept, generator, settings)
    return TrainingData(latents.float().cpu(), concept_masks(pipe, adapter, item, config, latents, images, generator))


@contextmanager
def sampling_scheduler(pipe, kind: str):
    """Inside the block the pipeline samples with ``kind``'s scheduler (``pipeline``: its
    own; ``dpm_solver``: DPM-Solver multistep on the same noise schedule); restored after.

    Args:
        pipe: the pipeline.
        kind: ``"pipeline"`` or ``"dpm_solver"``.
    """
    if kind == "pipeline":
        yield
        return
    from diffusers import DPMSolverMultistepScheduler

    own = pipe.scheduler
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(own.config)
    try:
        yield
    finally:
        pipe.scheduler = own


def concept_masks(pipe, adapter, item: ConceptPrompts, config: "MACEConfig", latents, images, generator) -> torch.Tensor | None:
    """Where the concept is in each training image (``None``: everywhere)."""
    concept = item.concept.text
    if config.mask_source == "whole_image":
        return None
    if config.mask_source == "folder":
        return folder_masks(Path(config.data_dir).expanduser() / f"{concept} mask", len(latents))
    if config.mask_source == "grounded_sam":
        images = images if images is not None else decode_latents(pipe, latents)
        label = config.grounding_label or concept
        return grounded_sam_masks(images, label, config.grounding_model, config.sam_model, config.box_threshold,
                                  adapter.device, every_box=config.mask_boxes == "all",
                                  text_threshold=config.text_threshold)
    prompt = config.image_prompt.format(concept)
    cond = adapter.encode([prompt])
    positions = concept_positions(adapter, prompt, concept, "none", cond.hidden.shape[1])[None].to(adapter.device)
    return attention_masks(
        adapter, latents.to(adapter.device), cond, positions, config.mask_timesteps, adapter.noise_scheduler().add_noise,
        config.mask_threshold, generator,
    )
