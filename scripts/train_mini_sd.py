#!/usr/bin/env python
"""Train mini-sd: a StableDiffusionPipeline of the shapes world (VAE, then UNet).

    python scripts/train_mini_sd.py --stage vae    # about 6 minutes on 2 CPU cores
    python scripts/train_mini_sd.py --stage unet   # about 45 minutes; resumes from its checkpoint

Needs mini-clip's text tower in erasure/assets/mini-sd/text_encoder (train_mini_clip.py),
which stays frozen, as in Stable Diffusion. The UNet trains on precomputed VAE latents
and on the text embeddings of a fixed pool of captions (a few per training image), so
that a step costs one UNet forward and backward and nothing else.

The unconditional prompt "" is trained on a random 10% of all images (caption dropout,
for classifier-free guidance) and, in addition, on half of the empty scenes: "" thus
means "anything, quite often nothing", so that an erasure towards "" (UCE, RECE, ESD)
has a "nothing" to fall back to.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from world_common import ASSETS, CACHE_DIR, REPO, Stopwatch, images_to_tensor, machine, resumable_checkpoint, setup, write_json, write_text

from erasure.atomic import atomic_dir, atomic_path
from erasure.tokenizer import clip_tokenizer
from erasure.training import TrainingState, finite_value, run_steps
from erasure.world.captions import caption
from erasure.world.data import TRAIN_SEED, render_dataset, sample_scenes, scene_rng

RUN_DIR = REPO / "runs" / "mini-sd"
OUT = ASSETS / "mini-sd"
RESOLUTION = 32
GENERAL_CAPTIONS = 1000  # world captions shipped for MACE's preservation set (general_captions: model)
DEFAULTS = {"resolution": RESOLUTION, "num_inference_steps": 25, "guidance_scale": 4.5}

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,  # 32 -> 16 -> 8: latents 4 x 8 x 8
    up_block_types=("UpDecoderBlock2D",) * 3,
    # narrow at full resolution, where a convolution costs most: 16 channels there let
    # the VAE see 2.4x the images per CPU-minute of (32, 64, 64), which matters more
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=RESOLUTION,
)
UNET_CONFIG = dict(
    sample_size=RESOLUTION // 4,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(64, 128, 128),
    layers_per_block=1,
    attention_head_dim=8,  # as SD 1.x's config (diffusers reads it as the number of heads)
    cross_attention_dim=128,  # mini-clip's text width
    norm_num_groups=32,
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",  # SD's scaled_linear leaves too much signal at 8x8 latents
    prediction_type="epsilon",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=("vae", "unet", "all"), default="all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-size", type=int, default=40000, help="training scenes (TRAIN_SEED)")
    p.add_argument("--vae-steps", type=int, default=3000)
    p.add_argument("--vae-batch-size", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--unet-steps", type=int, default=5500, help="total steps; more than a checkpoint's extends it")
    p.add_argument("--unet-batch-size", type=int, default=64)
    p.add_argument("--unet-lr", type=float, default=5e-4)
    p.add_argument("--unet-images", type=int, default=24000, help="scenes whose latents the UNet trains on")
    p.add_argument("--captions-per-image", type=int, default=2, help="size of the fixed caption pool per scene")
    p.add_argument("--caption-dropout", type=float, default=0.1, help="share of all samples trained with \"\"")
    p.add_argument("--empty-uncond", type=float, default=0.5, help="extra share of empty scenes trained with \"\"")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR loss weighting (Hang et al. 2023)")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--text-encoder", default=str(OUT / "text_encoder"), help="mini-clip's text tower (train_mini_clip.py --phase text)")
    p.add_argument("--run-dir", default=str(RUN_DIR), help="VAE, cached latents/captions and the UNet checkpoint")
    return p.parse_args()


# ---------------------------------------------------------------- VAE


def train_vae(args, images: torch.Tensor):
    """AutoencoderKL trained on reconstruction (MSE + L1) with a tiny KL term, as SD's."""
    from diffusers import AutoencoderKL

    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s / args.vae_steps, 1)))
    )
    gen = torch.Generator().manual_seed(args.seed)
    for step in (bar := tqdm(range(args.vae_steps), desc="vae", mininterval=5)):
        x = images[torch.randint(len(images), (args.vae_batch_size,), generator=gen)] * 2 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.mse_loss(recon, x) + 0.1 * F.l1_loss(recon, x) + args.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return vae.eval()


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (unscaled)."""
    means, stds = [], []
    for i in tqdm(range(0, len(images), batch), desc="latents", mininterval=5):
        dist = vae.encode(images[i : i + batch] * 2 - 1).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def vae_report(vae, images: torch.Tensor) -> dict:
    mean, _ = encode_latents(vae, images)
    recon = vae.decode(mean).sample.clamp(-1, 1)
    return {"recon_mse": float(F.mse_loss(recon, images * 2 - 1)), "latent_std": float(mean.std())}


def run_vae_stage(args) -> None:
    from diffusers import AutoencoderKL

    clock = Stopwatch()
    data = render_dataset(args.train_size, TRAIN_SEED, cache_dir=CACHE_DIR)
    images = images_to_tensor(data.images)
    vae = train_vae(args, images)
    held = images_to_tensor(render_dataset(1000, 1, cache_dir=CACHE_DIR).images)
    report = vae_report(vae, held)
    vae.register_to_config(scaling_factor=round(1.0 / report["latent_std"], 5))  # unit-variance latents, as SD's 0.18215
    with atomic_dir(Path(args.run_dir) / "vae") as tmp:
        vae.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    report["minutes"] = round(clock.minutes(), 2)
    write_json(Path(args.run_dir) / "vae_report.json", report)
    AutoencoderKL.from_pretrained(Path(args.run_dir) / "vae")  # fails loudly if the folder is unusable
    print("vae:", report)


# ---------------------------------------------------------------- UNet data


def load_frozen(args):
    """The saved (float16-rounded) VAE and text encoder, in float32: the UNet trains on
    exactly what will ship."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    vae = AutoencoderKL.from_pretrained(Path(args.run_dir) / "vae", torch_dtype=torch.float32).eval()
    text = CLIPTextModel.from_pretrained(args.text_encoder, torch_dtype=torch.float32).eval()
    return vae, text


@torch.no_grad()
def encode_texts(text_encoder, texts: list[str], batch: int = 256) -> torch.Tensor:
    """Last hidden states (N, 77, width) in float16, as the pipeline computes them."""
    tok = clip_tokenizer()
    out = []
    for i in tqdm(range(0, len(texts), batch), desc="text pool", mininterval=5):
        ids = tok(texts[i : i + batch], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        out.append(text_encoder(ids)[0].half())
    return torch.cat(out)


def _fingerprint(*folders: Path) -> str:
    """Short hash of the weight files in ``folders``."""
    import hashlib

    h = hashlib.sha256()
    for folder in folders:
        for f in sorted(folder.glob("*.safetensors")):
            h.update(f.read_bytes())
    return h.hexdigest()[:10]


def build_data(args, vae, text_encoder) -> dict:
    """Latents of ``unet_images`` scenes and a caption pool, cached in runs/mini-sd."""
    key = _fingerprint(Path(args.run_dir) / "vae", Path(args.text_encoder))  # a new VAE or text tower: new cache
    cache = Path(args.run_dir) / f"unet_data_n{args.unet_images}_k{args.captions_per_image}_s{args.seed}_{key}.safetensors"
    if cache.exists():
        data = load_file(str(cache))
        data["empty"] = data["empty"].bool()
        return data
    world = render_dataset(args.train_size, TRAIN_SEED, cache_dir=CACHE_DIR)
    n = args.unet_images
    mean, std = encode_latents(vae, images_to_tensor(world.images[:n]))
    rng = np.random.default_rng([args.seed, 1])
    texts = [caption(s, rng) for s in world.scenes[:n] for _ in range(args.captions_per_image)]
    pool = sorted(set(texts) | {""})
    position = {t: i for i, t in enumerate(pool)}
    data = {
        "latent_mean": mean,
        "latent_std": std,
        "caption_ids": torch.tensor([position[t] for t in texts]).view(n, args.captions_per_image),
        "embeddings": encode_texts(text_encoder, pool),
        "empty_id": torch.tensor(position[""]),
        "empty": torch.tensor([len(s.objects) == 0 for s in world.scenes[:n]]),
    }
    with atomic_path(cache) as tmp:
        save_file({k: (v.to(torch.uint8) if v.dtype == torch.bool else v).contiguous() for k, v in data.items()}, str(tmp))
    print(f"caption pool: {len(pool):,} distinct captions for {n:,} scenes")
    return data


# ---------------------------------------------------------------- UNet training


class EMA:
    """Exponential moving average of parameters (sampled images are much cleaner)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.shadow, model.parameters()):
            s.lerp_(p.detach(), 1 - decay)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for s, p in zip(self.shadow, model.parameters()):
            p.copy_(s)


def train_unet(args, data: dict, scaling_factor: float):
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(args.seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    noise_sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k not in ("set_alpha_to_one", "steps_offset")})
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    weight = torch.clamp(snr, max=args.snr_gamma) / snr  # min-SNR-gamma for epsilon prediction
    ema = EMA(unet, args.ema_decay)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.unet_lr, weight_decay=0.01)
    # Constant rate after warm-up; the EMA does the annealing. A run can then be
    # extended (a larger --unet-steps resumes from the checkpoint) without changing
    # what the first steps did.
    warm = 200
    lr_at = lambda s: min(1.0, (s + 1) / warm)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    tensors = {f"unet.{k}": v for k, v in unet.state_dict().items()} | {f"ema.{i}": s for i, s in enumerate(ema.shadow)}
    state = TrainingState(tensors=tensors, optimizer=opt, generator=torch.Generator().manual_seed(args.seed),
                          extra={"train_seconds": 0.0})
    checkpoint = resumable_checkpoint(Path(args.run_dir) / "unet-checkpoint", run_identity(args), "unet")
    if checkpoint.resuming:
        checkpoint.restore(state)
        print(f"resumed from step {state.step} ({state.extra['train_seconds'] / 60:.1f} min of training so far)")
    start, before, clock = state.step, state.extra["train_seconds"], Stopwatch()
    for group in opt.param_groups:
        group["lr"] = args.unet_lr * lr_at(start)
    sched.last_epoch = start

    n, k = data["caption_ids"].shape
    gen = state.generator

    def step(index: int) -> float:
        idx = torch.randint(n, (args.unet_batch_size,), generator=gen)
        cap = data["caption_ids"][idx, torch.randint(k, (len(idx),), generator=gen)]
        uncond = torch.rand(len(idx), generator=gen) < args.caption_dropout
        uncond |= data["empty"][idx] & (torch.rand(len(idx), generator=gen) < args.empty_uncond)
        cap = torch.where(uncond, data["empty_id"], cap)
        eps = torch.randn(data["latent_mean"][idx].shape, generator=gen)
        latents = (data["latent_mean"][idx] + data["latent_std"][idx] * torch.randn(eps.shape, generator=gen)) * scaling_factor
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=gen)
        noisy = noise_sched.add_noise(latents, eps, t)
        pred = unet(noisy, t, encoder_hidden_states=data["embeddings"][cap].float()).sample
        loss = (F.mse_loss(pred, eps, reduction="none").mean(dim=(1, 2, 3)) * weight[t]).mean()
        value = finite_value(loss, f"lower --unet-lr (now {args.unet_lr:g})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(unet, index)
        state.extra["train_seconds"] = before + 60 * clock.minutes()
        return value

    run_steps(step, state, args.unet_steps, checkpoint, args.checkpoint_every)
    ema.copy_to(unet)
    return unet.eval(), state.extra["train_seconds"] / 60


def run_identity(args) -> dict:
    """The settings a resumed UNet run must share with its checkpoint (not the step
    count: a larger --unet-steps extends the run)."""
    settings = ("seed", "train_size", "unet_batch_size", "unet_lr", "unet_images", "captions_per_image",
                "caption_dropout", "empty_uncond", "ema_decay", "snr_gamma")
    frozen = _fingerprint(Path(args.run_dir) / "vae", Path(args.text_encoder))
    return {**{key: vars(args)[key] for key in settings}, "frozen_models": frozen}


# ---------------------------------------------------------------- assembly


def save_pipeline(args, vae, text_encoder, unet, minutes: dict) -> None:
    """The diffusers folder, float16, without tokenizer files and without a safety checker."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with atomic_dir(args.out) as tmp:
        pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(tmp / "tokenizer")  # the real CLIP tokenizer, rebuilt by erasure.tokenizer
        write_json(tmp / "erasure_defaults.json", DEFAULTS)
        write_text(tmp / "general_captions.txt", "\n".join(general_captions(GENERAL_CAPTIONS)) + "\n")
        write_json(tmp / "training.json", {"minutes": minutes, "args": vars(args)})
        write_text(tmp / "README.md", card(args, unet, vae, text_encoder, minutes))


def general_captions(count: int) -> list[str]:
    """Captions of ``count`` training scenes, each drawn with its own seed: what MACE's
    ``general_captions: model`` preserves on this model (``erasure`` never imports the world)."""
    return [caption(scene, scene_rng(TRAIN_SEED + 1, i)) for i, scene in enumerate(sample_scenes(count, TRAIN_SEED))]


def card(args, unet, vae, text_encoder, minutes: dict) -> str:
    count = lambda m: f"{sum(p.numel() for p in m.parameters()):,}"
    return f"""# mini-sd

A miniature Stable Diffusion trained by this project on the shapes world
(`erasure.world`): a diffusers `StableDiffusionPipeline` with exactly SD 1.x's
components (`AutoencoderKL`, `UNet2DConditionModel` with cross-attention,
`CLIPTextModel`, the real CLIP tokenizer, `DDIMScheduler`). Every erasure method and
the evaluator run the same code on it as on real SD, in seconds on a CPU.

    import erasure
    pipe = erasure.load_pipeline("mini-sd")
    image = pipe("a red circle", height=32, width=32, num_inference_steps=25, guidance_scale=4.5).images[0]

No tokenizer files are stored: the loader passes `tokenizer=erasure.tokenizer.clip_tokenizer()`
(OpenAI CLIP's BPE, rebuilt offline). Weights are float16 safetensors; load in float32
on a CPU (`torch_dtype=torch.float32`).

## Recommended generation settings (also in `erasure_defaults.json`)
height = width = {DEFAULTS['resolution']}, num_inference_steps = {DEFAULTS['num_inference_steps']}, guidance_scale = {DEFAULTS['guidance_scale']}

`general_captions.txt`: {GENERAL_CAPTIONS:,} captions of training scenes, one a line, which
MACE preserves with `general_captions: model`.

## Data
{args.unet_images:,} scenes of the world (seed TRAIN_SEED=0; 32x32; 6 shapes x 6 colours x
filled/outlined x small/large, 5 backgrounds; 0 shapes 12%, 1 shape 60%, 2 shapes 18%,
3 shapes 10%), {args.captions_per_image} captions each from the world's templates (with synonyms).
The empty prompt `""`: {args.caption_dropout:.0%} of all samples (caption dropout, for
classifier-free guidance) and in addition {args.empty_uncond:.0%} of the empty scenes, so `""`
means "anything, often nothing": an erasure towards `""` has a nothing to fall back to.

## Architecture
- text encoder: mini-clip's text tower, frozen during UNet training ({count(text_encoder)} parameters; width {text_encoder.config.hidden_size}, {text_encoder.config.num_hidden_layers} layers)
- VAE: `AutoencoderKL`, blocks {list(VAE_CONFIG['block_out_channels'])}, 32x32x3 -> 4x8x8 latents, scaling factor {vae.config.scaling_factor} ({count(vae)} parameters)
- UNet: `UNet2DConditionModel`, blocks {list(UNET_CONFIG['block_out_channels'])} ({', '.join(UNET_CONFIG['down_block_types'])}), cross-attention dim {UNET_CONFIG['cross_attention_dim']}, {len([n for n, _ in unet.named_modules() if n.endswith('attn2')])} cross-attention layers ({count(unet)} parameters)
- scheduler: DDIM, 1,000 training steps, `squaredcos_cap_v2` betas, epsilon prediction

## Training
- VAE: `python scripts/train_mini_sd.py --stage vae --seed {args.seed} --vae-steps {args.vae_steps}` ({minutes.get('vae', float('nan')):.1f} min): MSE + 0.1 L1 + {args.kl_weight} KL, batch {args.vae_batch_size}
- UNet: `python scripts/train_mini_sd.py --stage unet --seed {args.seed} --unet-steps {args.unet_steps}` ({minutes.get('unet', float('nan')):.1f} min): epsilon loss with min-SNR-{args.snr_gamma:g} weighting, AdamW lr {args.unet_lr}, batch {args.unet_batch_size}, EMA {args.ema_decay}
- machine: {machine()}

## Measured accuracy
<!-- measure_mini_sd:begin -->
Not measured yet: run `python scripts/measure_mini_sd.py`.
<!-- measure_mini_sd:end -->
"""


def run_unet_stage(args) -> None:
    clock = Stopwatch()
    vae, text_encoder = load_frozen(args)
    data = build_data(args, vae, text_encoder)
    minutes = {"unet_data": round(clock.minutes(), 2)}
    unet, loop_minutes = train_unet(args, data, vae.config.scaling_factor)
    minutes["unet"] = round(minutes["unet_data"] + loop_minutes, 2)
    report = Path(args.run_dir) / "vae_report.json"
    if report.exists():
        minutes["vae"] = json.loads(report.read_text())["minutes"]
    save_pipeline(args, vae, text_encoder, unet, minutes)
    print(f"wrote {args.out}; minutes: {minutes}")


def main() -> None:
    args = parse_args()
    setup(args.seed, args.threads)
    Path(args.run_dir).mkdir(parents=True, exist_ok=True)
    if args.stage in ("vae", "all"):
        run_vae_stage(args)
    if args.stage in ("unet", "all"):
        run_unet_stage(args)


if __name__ == "__main__":
    main()
