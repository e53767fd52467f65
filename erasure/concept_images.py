"""Images of a concept for fine-tuning, and masks of where the concept is in them.

MACE's stage 2 trains on a handful of images of each concept made by the base model
itself (or given by the user) and lowers the concept's attention only where the
concept is. Its authors segment the images with GroundingDINO + SAM; that needs two
extra models, so the default here is the diffusion model's own cross-attention to the
concept's tokens (DAAM-style: noise the image's latents, average the attention maps
over layers and a few timesteps, threshold relative to the peak), which needs no extra
weights.

Mask sources (``MaskSource``):
- ``attention``: the base model's cross-attention maps (default).
- ``folder``: the user's masks, one grey-scale image per training image.
- ``grounded_sam``: GroundingDINO boxes then SAM masks, through ``transformers``, when
  the user has those weights (a Hub id in the cache or a local folder).
- ``whole_image``: no mask, every pixel counts (the authors' setting for styles).

Masks are ``(n, 1, H, W)`` floats in {0, 1} at any resolution: the loss resizes them to
each layer's feature map.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .attention import AttentionMaps, observe_cross_attention
from .errors import ErasureError
from .generation import GenerationSettings

MaskSource = Literal["attention", "folder", "grounded_sam", "whole_image"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@torch.no_grad()
def generate_latents(pipe, prompt: str, count: int, generator: torch.Generator, settings: GenerationSettings) -> torch.Tensor:
    """``count`` samples of ``prompt`` by the pipeline as it is, as latents (UNet space).

    Args:
        pipe: a diffusers Stable Diffusion pipeline (any family).
        prompt: what to draw.
        count: how many images.
        generator: seeds the initial noise (a CPU generator works on every device).
        settings: ``erasure.generation.generation_settings(pipe, ...)``.
    """
    output = pipe(prompt=prompt, num_images_per_prompt=count, generator=generator, output_type="latent",
                  **settings.pipeline_kwargs())
    return output.images


@torch.no_grad()
def encode_images(pipe, images: list, size: int | None = None) -> torch.Tensor:
    """PIL images as latents (UNet space).

    Args:
        pipe: the pipeline whose VAE encodes.
        images: PIL images, resized to ``size`` x ``size``.
        size: side in pixels; default: the model's native resolution.
    """
    size = size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    pixels = pipe.image_processor.preprocess(images, height=size, width=size).to(pipe.vae.device, pipe.vae.dtype)
    return pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor) -> list:
    """Latents (UNet space) as PIL images.

    Args:
        pipe: the pipeline whose VAE decodes.
        latents: ``(n, C, h, w)`` latents as the UNet sees them.
    """
    pixels = pipe.vae.decode(latents.to(pipe.vae.device, pipe.vae.dtype) / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(pixels, output_type="pil")


@torch.no_grad()
def attention_masks(
    adapter,
    latents: torch.Tensor,
    cond,
    positions: torch.Tensor,
    timesteps: list[int],
    add_noise,
    threshold: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Masks from the model's attention to the concept's tokens.

    Args:
        adapter: the model's ``StableDiffusionAdapter``; its current weights are used.
        latents: ``(n, C, H, W)`` clean latents of the images.
        cond: ``PromptEmbeddings`` of the prompt that names the concept (batch 1 or n).
        positions: ``(1 or n, tokens)`` booleans, the concept's tokens in that prompt.
        timesteps: noise levels to average over.
        add_noise: ``add_noise(latents, noise, timesteps)`` of a diffusers scheduler.
        threshold: share of each map's peak above which a pixel is the concept.
        generator: source of the noise (CPU generator, for reproducibility).

    Returns:
        ``(n, 1, H, W)`` masks at the latents' resolution.
    """
    count = latents.shape[0]
    positions = positions.expand(count, -1) if positions.shape[0] == 1 else positions
    recorder = AttentionMaps(positions, tuple(latents.shape[-2:]))
    with observe_cross_attention(adapter.cross_attention_modules(), recorder):
        for timestep in timesteps:
            noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
            t = torch.full((count,), timestep, dtype=torch.long, device=latents.device)
            adapter.predict_noise(add_noise(latents, noise, t), t, cond)
    maps = recorder.mean()
    peak = maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None, None]
    return (maps / peak > threshold).float().cpu()


def read_images(folder: Path) -> list:
    """The images of a folder, sorted by file name, as RGB PIL images.

    Args:
        folder: a folder of ``.png``, ``.jpg``, ``.jpeg``, ``.webp`` or ``.bmp`` files.
    """
    from PIL import Image

    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ErasureError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): add some or remove data_dir")
    return [Image.open(p).convert("RGB") for p in paths]


def folder_masks(folder: Path, count: int) -> torch.Tensor:
    """The user's masks (white = concept), paired with the images by sorted file name.

    Args:
        folder: one grey-scale mask per training image.
        count: the number of training images, which the masks must match.
    """
    if not folder.is_dir():
        raise ErasureError(f"mask folder {folder} not found: put one mask per training image there")
    masks = read_images(folder)
    if len(masks) != count:
        raise ErasureError(f"{folder} has {len(masks)} masks for {count} images: give one mask per image")
    arrays = [np.asarray(m.convert("L"), dtype=np.float32) / 255.0 for m in masks]
    if len({a.shape for a in arrays}) != 1:
        raise ErasureError(f"the masks in {folder} differ in size: give them all the images' size")
    return (torch.from_numpy(np.stack(arrays))[:, None] > 0.5).float()


def grounded_sam_masks(
    images: list, label: str, detector: str, segmenter: str, box_threshold: float, device: torch.device,
    every_box: bool = False, text_threshold: float = 0.25,
) -> torch.Tensor:
    """GroundingDINO finds ``label``; SAM segments the best-scoring box, or every box above
    the threshold, their masks united (as MACE's authors do). An image where nothing is
    found keeps every pixel.

    Args:
        images: PIL images.
        label: what to look for (the concept's name, or e.g. "a person" for celebrities).
        detector: GroundingDINO Hub id or folder.
        segmenter: SAM Hub id or folder (SAM or SAM-HQ).
        box_threshold: minimum detection score.
        device: where to run both models.
        every_box: segment every box above ``box_threshold`` instead of the best one.
        text_threshold: the detector's threshold for naming a box by the label's words
            (GroundingDINO's 0.25); boxes are kept by ``box_threshold`` alone, so it
            labels them without changing a mask.
    """
    from transformers import AutoModelForMaskGeneration, AutoModelForZeroShotObjectDetection, AutoProcessor

    with _grounded_sam_weights(detector, segmenter):
        detector_processor = AutoProcessor.from_pretrained(detector)
        detector_model = AutoModelForZeroShotObjectDetection.from_pretrained(detector).to(device).eval()
        segmenter_processor = AutoProcessor.from_pretrained(segmenter)
        segmenter_model = AutoModelForMaskGeneration.from_pretrained(segmenter).to(device).eval()
    text = label.lower().strip().rstrip(".") + "."  # GroundingDINO expects lower case, dot-terminated
    masks = []
    with torch.no_grad():
        for image in images:
            boxes = _boxes(detector_processor, detector_model, image, text, box_threshold, text_threshold, device,
                           every_box)
            if not boxes:
                masks.append(torch.ones(1, image.height, image.width))
                continue
            inputs = segmenter_processor(images=image, input_boxes=[boxes], return_tensors="pt").to(device)
            outputs = segmenter_model(**inputs, multimask_output=False)
            mask = segmenter_processor.post_process_masks(
                outputs.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
            )[0]
            masks.append(mask.reshape(-1, image.height, image.width).any(0, keepdim=True).float())
    return torch.stack(masks)


def require_grounded_sam(detector: str, segmenter: str) -> None:
    """Stop before any work when the GroundingDINO or SAM weights are not at hand (only
    their configs are read; nothing is downloaded when the Hub is offline).

    Args:
        detector: GroundingDINO Hub id or folder.
        segmenter: SAM Hub id or folder.
    """
    from transformers import AutoConfig

    with _grounded_sam_weights(detector, segmenter):
        AutoConfig.from_pretrained(detector)
        AutoConfig.from_pretrained(segmenter)


@contextmanager
def _grounded_sam_weights(detector: str, segmenter: str):
    """Turn a failed load of either model into one error naming both and the way out."""
    try:
        yield
    except (OSError, ValueError) as error:
        raise ErasureError(
            f"GroundingDINO/SAM weights could not be loaded ({str(error).splitlines()[0][:120]}): this package never "
            f"downloads them; fetch {detector!r} and {segmenter!r} (huggingface-cli download ID) or give local "
            "folders as grounding_model/sam_model, or use mask_source: attention"
        ) from None


def _boxes(processor, model, image, text: str, box_threshold: float, text_threshold: float, device,
           every_box: bool) -> list[list[float]]:
    """The best-scoring box above ``box_threshold``, or all of them (none: an empty list)."""
    inputs = processor(images=image, text=text, return_tensors="pt").to(device)
    outputs = model(**inputs)
    result = processor.post_process_grounded_object_detection(
        outputs, inputs.input_ids, threshold=box_threshold, text_threshold=text_threshold,
        target_sizes=[(image.height, image.width)],
    )[0]
    if len(result["scores"]) == 0:
        return []
    if every_box:
        return result["boxes"].tolist()
    return [result["boxes"][int(result["scores"].argmax())].tolist()]

