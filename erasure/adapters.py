"""Model-family adapters: the only place where SD 1.x, SD 2.x and SDXL differ.

Methods never look at the pipeline's class, tokenizers, text encoders or scheduler;
they ask the adapter to tokenise and encode prompts, to list the cross-attention
projections, to predict noise, and for the schedulers they sample and noise with.

- SD 1.x: CLIP ViT-L/14 text encoder (768-d), epsilon prediction.
- SD 2.x: OpenCLIP ViT-H/14 text encoder (1024-d), tokenizer pads with "!", the 768px
  models predict ``v`` instead of noise. ``predict_noise`` returns whatever the UNet
  predicts (its scheduler's ``prediction_type``): every method here combines
  predictions linearly, which is valid in either parameterisation.
- SDXL: two text encoders whose penultimate hidden states are concatenated (2048-d),
  a pooled embedding and "added time ids" as extra UNet conditioning.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ErasureError

CROSS_ATTENTION = "attn2"
KEY_VALUE_PROJECTIONS = ("to_k", "to_v")


@dataclass
class PromptEmbeddings:
    """Text conditioning for a batch of prompts, in the UNet's expected form.

    Attributes:
        hidden: ``(batch, 77, dim)`` token vectors fed to every cross-attention layer.
        token_counts: ``(batch,)`` number of real tokens, start and end tokens included.
        pooled: SDXL's pooled text embedding ``(batch, 1280)``, else ``None``.
    """

    hidden: torch.Tensor
    token_counts: torch.Tensor
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def repeat(self, times: int) -> "PromptEmbeddings":
        pooled = None if self.pooled is None else self.pooled.repeat_interleave(times, 0)
        return PromptEmbeddings(
            self.hidden.repeat_interleave(times, 0), self.token_counts.repeat_interleave(times, 0), pooled
        )

    def select(self, rows: torch.Tensor | slice) -> "PromptEmbeddings":
        """The given rows (an index tensor or a slice), as a batch of their own."""
        pooled = None if self.pooled is None else self.pooled[rows]
        return PromptEmbeddings(self.hidden[rows], self.token_counts[rows], pooled)

    @staticmethod
    def cat(parts: list["PromptEmbeddings"]) -> "PromptEmbeddings":
        pooled = None if parts[0].pooled is None else torch.cat([p.pooled for p in parts])
        return PromptEmbeddings(
            torch.cat([p.hidden for p in parts]), torch.cat([p.token_counts for p in parts]), pooled
        )


class StableDiffusionAdapter:
    """SD 1.x (and the base of the other families)."""

    family = "sd1"

    def __init__(self, pipe):
        self.pipe = pipe

    @property
    def unet(self) -> nn.Module:
        return self.pipe.unet

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def text_dim(self) -> int:
        return self.pipe.unet.config.cross_attention_dim

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the latents at the model's native resolution."""
        size = self.pipe.unet.config.sample_size
        return (self.pipe.unet.config.in_channels, size, size)

    def token_ids(self, prompt: str) -> list[int]:
        """Token ids of ``prompt`` with its start and end tokens, no padding, cut at the
        encoder's length (the first tokenizer's: SDXL's two share CLIP's vocabulary, so
        positions agree)."""
        tokenizer = self.pipe.tokenizer
        return tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids

    def concept_token_ids(self, text: str) -> list[int]:
        """Token ids of a word or phrase as it appears inside a prompt (no start or end token)."""
        return self.pipe.tokenizer(text, add_special_tokens=False).input_ids

    def token_counts(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.pipe.tokenizer(
            prompts, padding="max_length", max_length=self.pipe.tokenizer.model_max_length, truncation=True
        )
        return torch.tensor([sum(mask) for mask in tokens.attention_mask])

    @torch.no_grad()
    def encode(self, prompts: list[str] | str) -> PromptEmbeddings:
        """Encode prompts exactly as the pipeline does for generation."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        hidden, _ = self.pipe.encode_prompt(prompts, self.device, 1, False)
        return PromptEmbeddings(hidden, self.token_counts(prompts))

    def cross_attention_modules(self) -> dict[str, nn.Module]:
        """Every text cross-attention block of the UNet, by diffusers module name."""
        modules = {
            name: module
            for name, module in self.unet.named_modules()
            if name.endswith(CROSS_ATTENTION) and hasattr(module, "to_k")
        }
        if not modules:
            raise ErasureError("this UNet has no text cross-attention (attn2) layers: it is not a Stable Diffusion UNet")
        return modules

    def cross_attention_projections(self) -> dict[str, nn.Linear]:
        """The key and value projections of every cross-attention block: the matrices the
        closed-form methods edit (32 in SD 1.x, 140 in SDXL)."""
        return {
            f"{name}.{proj}": getattr(module, proj)
            for name, module in self.cross_attention_modules().items()
            for proj in KEY_VALUE_PROJECTIONS
        }

    def cross_attention_weights(self) -> dict[str, torch.Tensor]:
        """The key/value projection weights under their UNet parameter names (views, not copies)."""
        return {f"{name}.weight": linear.weight for name, linear in self.cross_attention_projections().items()}

    def ddim_scheduler(self, steps: int):
        """A DDIM schedule of ``steps`` steps over the model's own noise schedule, on the
        model's device (the pipeline's scheduler is left untouched)."""
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(self.pipe.scheduler.config)
        if not 1 <= steps <= scheduler.config.num_train_timesteps:
            raise ErasureError(
                f"a DDIM schedule of {steps} steps does not fit this model's {scheduler.config.num_train_timesteps} "
                "noise levels: use between 1 and that many"
            )
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler

    def noise_scheduler(self):
        """A DDPM scheduler with the model's training noise schedule, for ``add_noise``."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.pipe.scheduler.config)

    def training_target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet is trained to predict for ``add_noise(latents, noise, timesteps)``:
        the noise, or the velocity for a v-prediction model (SD 2.x at 768 px)."""
        scheduler = self.training_noise
        if scheduler.config.prediction_type == "v_prediction":
            return scheduler.get_velocity(latents, noise, timesteps)
        return noise

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``latents`` noised to ``timesteps`` with the model's own training schedule."""
        return self.training_noise.add_noise(latents, noise, timesteps)

    @functools.cached_property
    def training_noise(self):
        """The model's training noise schedule (one ``noise_scheduler()``, kept)."""
        return self.noise_scheduler()

    # ---- token ids and text encoders: what attacks differentiate through ----

    def tokenizers(self) -> list:
        """The tokenizer of each text encoder, in ``text_encoders()`` order."""
        return [self.pipe.tokenizer]

    def text_encoders(self) -> dict[str, nn.Module]:
        """The text encoders under their pipeline component names (``text_encoder``,
        SDXL's ``text_encoder_2``), which are also their weight-file prefixes."""
        return {"text_encoder": self.pipe.text_encoder}

    def token_embeddings(self) -> list[nn.Embedding]:
        """Each text encoder's token table, in ``text_encoders()`` order."""
        return [encoder.get_input_embeddings() for encoder in self.text_encoders().values()]

    def tokenize(self, prompts: list[str]) -> list[torch.Tensor]:
        """Token ids as the pipeline makes them, ``(batch, 77)`` per text encoder (padded with
        each tokenizer's own pad: the end token, or ``"!"`` for SD 2.x and SDXL's second)."""
        return [
            tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(self.device)
            for tokenizer in self.tokenizers()
        ]

    def encode_ids(self, ids: list[torch.Tensor]) -> PromptEmbeddings:
        """``encode`` from token ids (``tokenize``'s layout), with gradients when the caller
        enables them: attacks differentiate through it, with token vectors replaced by
        ``erasure.attacks.tokens.injected_tokens``. ``encode_ids(tokenize(p))`` equals ``encode(p)``.

        Args:
            ids: ``(batch, 77)`` token ids per text encoder.
        """
        encoder = self.pipe.text_encoder
        counts = token_counts_of(ids[0], self.pipe.tokenizer.eos_token_id)
        mask = None
        if getattr(encoder.config, "use_attention_mask", False):
            mask = (torch.arange(ids[0].shape[1], device=ids[0].device)[None] < counts[:, None].to(ids[0].device)).long()
        hidden = encoder(ids[0], attention_mask=mask)[0]
        return PromptEmbeddings(hidden.to(encoder.dtype), counts)

    def encode_in_batches(self, prompts: list[str], batch_size: int = 64):
        """Yield ``(prompts, PromptEmbeddings)`` chunks: bounded memory for thousands of prompts."""
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            yield chunk, self.encode(chunk)

    def pipeline_inputs(self, cond: PromptEmbeddings, uncond: PromptEmbeddings) -> dict:
        """Keyword arguments that make ``pipe(...)`` generate from embeddings instead of prompts
        (used to generate from adversarial embeddings)."""
        return {"prompt_embeds": cond.hidden, "negative_prompt_embeds": uncond.hidden}

    def negative_embeddings(self, count: int) -> PromptEmbeddings:
        """The negative conditioning ``pipe(prompt=...)`` uses when given no negative prompt:
        the empty prompt's embedding, ``count`` times."""
        return self.encode([""] * count)

    def _added_conditioning(self, embeddings: PromptEmbeddings, latents: torch.Tensor, dtype: torch.dtype) -> dict | None:
        return None

    def predict_noise(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | int,
        cond: PromptEmbeddings,
        uncond: PromptEmbeddings | None = None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        """The UNet's prediction, with classifier-free guidance when ``uncond`` is given.

        Gradients flow when the caller enables them (ESD trains through this call).
        """
        if uncond is None or guidance_scale == 1.0:
            return self._unet(latents, timestep, cond)
        both = PromptEmbeddings.cat([uncond, cond])
        pred_uncond, pred_cond = self._unet(torch.cat([latents, latents]), timestep, both).chunk(2)
        return pred_uncond + guidance_scale * (pred_cond - pred_uncond)

    def _unet(self, latents: torch.Tensor, timestep, embeddings: PromptEmbeddings) -> torch.Tensor:
        if len(embeddings) != latents.shape[0]:
            embeddings = embeddings.repeat(latents.shape[0] // len(embeddings))
        # diffusers' ``unet.dtype`` walks every submodule (1.9 ms on mini-sd, 7% of a forward pass): read it once.
        dtype = self.unet.dtype
        hidden = embeddings.hidden.to(dtype)
        added = self._added_conditioning(embeddings, latents, dtype)
        return self.unet(latents.to(dtype), timestep, encoder_hidden_states=hidden, added_cond_kwargs=added).sample


class StableDiffusion2Adapter(StableDiffusionAdapter):
    """SD 2.x: same code path; the differences (1024-d OpenCLIP text encoder, ``"!"``
    padding, v-prediction) are carried by the pipeline's own components."""

    family = "sd2"


class StableDiffusionXLAdapter(StableDiffusionAdapter):
    """SDXL: two text encoders, a pooled embedding and added time ids."""

    family = "sdxl"

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.pipe.default_sample_size
        return (self.pipe.unet.config.in_channels, size, size)

    @torch.no_grad()
    def encode(self, prompts: list[str] | str) -> PromptEmbeddings:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        hidden, _, pooled, _ = self.pipe.encode_prompt(
            prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return PromptEmbeddings(hidden, self.token_counts(prompts), pooled)

    def tokenizers(self) -> list:
        return [self.pipe.tokenizer, self.pipe.tokenizer_2]

    def text_encoders(self) -> dict[str, nn.Module]:
        return {"text_encoder": self.pipe.text_encoder, "text_encoder_2": self.pipe.text_encoder_2}

    def encode_ids(self, ids: list[torch.Tensor]) -> PromptEmbeddings:
        """Both encoders' penultimate hidden states, concatenated, and the second one's
        pooled output, as ``pipe.encode_prompt`` computes them."""
        hidden, pooled = [], None
        for token_ids, encoder in zip(ids, self.text_encoders().values()):
            output = encoder(token_ids, output_hidden_states=True)
            if pooled is None and output[0].ndim == 2:  # the projection model's text embedding
                pooled = output[0]
            hidden.append(output.hidden_states[-2])
        counts = token_counts_of(ids[0], self.pipe.tokenizer.eos_token_id)
        return PromptEmbeddings(torch.cat(hidden, dim=-1).to(self.pipe.text_encoder_2.dtype), counts, pooled)

    def pipeline_inputs(self, cond: PromptEmbeddings, uncond: PromptEmbeddings) -> dict:
        return {
            **super().pipeline_inputs(cond, uncond),
            "pooled_prompt_embeds": cond.pooled,
            "negative_pooled_prompt_embeds": uncond.pooled,
        }

    def negative_embeddings(self, count: int) -> PromptEmbeddings:
        """The empty prompt's embedding, or zeros where the pipeline is configured to use
        zeros for it (``force_zeros_for_empty_prompt``, SDXL's default)."""
        empty = super().negative_embeddings(count)
        if not getattr(self.pipe.config, "force_zeros_for_empty_prompt", False):
            return empty
        return PromptEmbeddings(torch.zeros_like(empty.hidden), empty.token_counts, torch.zeros_like(empty.pooled))

    def _added_conditioning(self, embeddings: PromptEmbeddings, latents: torch.Tensor, dtype: torch.dtype) -> dict:
        # Original size, crop offset, target size: the full image, uncropped.
        height, width = (s * self.pipe.vae_scale_factor for s in latents.shape[-2:])
        time_ids = torch.tensor([height, width, 0, 0, height, width], dtype=latents.dtype, device=latents.device)
        return {
            "text_embeds": embeddings.pooled.to(dtype),
            "time_ids": time_ids.expand(latents.shape[0], -1).to(dtype),
        }


def token_counts_of(ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Real tokens per row of padded ids (start and first end token included)."""
    return ((ids == eos_token_id).long().argmax(dim=1) + 1).cpu()


def adapter_for(pipe) -> StableDiffusionAdapter:
    """The adapter for a diffusers Stable Diffusion pipeline of any supported family."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return StableDiffusionXLAdapter(pipe)
    if getattr(pipe, "unet", None) is None or getattr(pipe, "text_encoder", None) is None:
        raise ErasureError(
            f"{type(pipe).__name__} is not a Stable Diffusion pipeline (needs a UNet and a CLIP text encoder)"
        )
    # OpenCLIP's tokenizer pads with "!" where OpenAI CLIP's pads with the end token.
    if pipe.text_encoder.config.hidden_size == 1024 or getattr(pipe.tokenizer, "pad_token", None) == "!":
        return StableDiffusion2Adapter(pipe)
    return StableDiffusionAdapter(pipe)
