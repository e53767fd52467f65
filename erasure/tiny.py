"""Tiny randomly initialised SD 1.x-, SD 2.x- and SDXL-shaped pipelines, built from
configs with no download: for tests and for a smoke run of the whole tool in seconds.

    python -m erasure.tiny tiny-sd          # writes an SD 1.x-shaped pipeline folder
    erase --method uce --concepts airplane --model tiny-sd

Shapes follow diffusers' own ``get_dummy_components()`` test fixtures; the tokenizer is
the real CLIP one, built from open-clip-torch's BPE file. Random weights know no
concepts: erasure *quality* is measured on the bundled ``mini-sd``.
"""

from __future__ import annotations

import argparse

import torch

FAMILIES = ("sd1", "sd2", "sdxl")


def _text_encoder(hidden_size: int, projection: bool = False, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
        hidden_size=hidden_size,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=49408,
        max_position_embeddings=77,
        projection_dim=32,
        hidden_act="gelu",
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
        sample_size=32,
    )


def build_tiny_pipeline(family: str = "sd1", seed: int = 0):
    """A randomly initialised pipeline of the given family, on the CPU in float32."""
    from diffusers import (
        DDIMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    from .tokenizer import clip_tokenizer

    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
        prediction_type="v_prediction" if family == "sd2" else "epsilon",
    )
    torch.manual_seed(seed)
    if family == "sdxl":
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
            cross_attention_dim=64,
            norm_num_groups=1,
        )
        pipe = StableDiffusionXLPipeline(
            vae=_vae(),
            text_encoder=_text_encoder(32, seed=seed + 1),
            text_encoder_2=_text_encoder(32, projection=True, seed=seed + 2),
            tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(pad_token="!"),
            unet=unet,
            scheduler=scheduler,
        )
    else:
        text_dim = 32
        unet = UNet2DConditionModel(
            block_out_channels=(4, 8),
            layers_per_block=1,
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=text_dim,
            attention_head_dim=(2, 4) if family == "sd2" else 2,
            use_linear_projection=family == "sd2",
            norm_num_groups=2,
        )
        pipe = StableDiffusionPipeline(
            vae=_vae(),
            text_encoder=_text_encoder(text_dim, seed=seed + 1),
            tokenizer=clip_tokenizer(pad_token="!" if family == "sd2" else "<|endoftext|>"),
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    pipe.register_to_config(_name_or_path=f"tiny-{family}-seed{seed}")
    return pipe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m erasure.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="where to write the pipeline folder")
    parser.add_argument("--family", default="sd1", choices=FAMILIES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build_tiny_pipeline(args.family, args.seed).save_pretrained(args.folder)
    print(f"wrote a tiny random {args.family} pipeline to {args.folder}")


if __name__ == "__main__":
    main()
