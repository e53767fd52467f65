"""Stable Diffusion pipelines of the real architectures with random weights, built from
configs (no download): for timing and memory benchmarks at real scale.

    from sd_architectures import random_pipeline
    pipe = random_pipeline("sd1.4", device="cuda", dtype=torch.float16)
"""

from __future__ import annotations

import torch

ARCHITECTURES = ("sd1.4", "sd2.1", "sdxl")


def _text_encoder(hidden: int, layers: int, heads: int, act: str, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, hidden_act=act,
        projection_dim=projection or hidden, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _vae(sample_size: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=sample_size,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )


def random_pipeline(architecture: str = "sd1.4", device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A randomly initialised pipeline with the exact module shapes of the named model."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

    from erasure.tokenizer import clip_tokenizer

    torch.manual_seed(0)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if architecture == "sdxl":
        unet = UNet2DConditionModel(
            sample_size=128, cross_attention_dim=2048, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        pipe = StableDiffusionXLPipeline(
            vae=_vae(1024), unet=unet, scheduler=scheduler,
            text_encoder=_text_encoder(768, 12, 12, "quick_gelu"), tokenizer=clip_tokenizer(),
            text_encoder_2=_text_encoder(1280, 32, 20, "gelu", projection=1280), tokenizer_2=clip_tokenizer("!"),
        )
    elif architecture in ("sd1.4", "sd2.1"):
        sd2 = architecture == "sd2.1"
        unet = UNet2DConditionModel(
            sample_size=96 if sd2 else 64, cross_attention_dim=1024 if sd2 else 768,
            attention_head_dim=(5, 10, 20, 20) if sd2 else 8, use_linear_projection=sd2,
        )
        pipe = StableDiffusionPipeline(
            vae=_vae(768 if sd2 else 512), unet=unet, scheduler=scheduler,
            text_encoder=_text_encoder(1024, 23, 16, "gelu") if sd2 else _text_encoder(768, 12, 12, "quick_gelu"),
            tokenizer=clip_tokenizer("!" if sd2 else "<|endoftext|>"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    else:
        raise SystemExit(f"unknown architecture {architecture!r}: use one of {', '.join(ARCHITECTURES)}")
    pipe.register_to_config(_name_or_path=f"random-{architecture}")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)


def benchmark_pipeline(model: str, device: str):
    """A benchmark's float32 pipeline: an architecture of ``ARCHITECTURES`` with random
    weights, or a model ``erasure.load_pipeline`` reads (``mini-sd``, a folder, a Hub id).

    Args:
        model: an architecture name or a model.
        device: where it runs.
    """
    if model in ARCHITECTURES:
        return random_pipeline(model, device, torch.float32)
    import erasure

    return erasure.load_pipeline(model, device=device, dtype="float32")
