"""How images are sampled, for everything in the package that samples them: the evaluator
(``erase-eval``), MACE's images of a concept, RECE's validation.

One place decides the settings and checks them, so that every caller treats the same
input alike: ``guidance_scale=0`` is a real value (no classifier-free guidance), never
"use the default"; ``None`` is "use the default". Defaults come from the model's
``erasure_defaults.json`` (the bundled mini-sd has one), else from the pipeline's own
``__call__`` defaults (50 steps; guidance 7.5 for SD 1.x/2.x, 5.0 for SDXL), and the
model's native resolution.

    settings = generation_settings(pipe, guidance_scale=0)
    images = pipe(prompts, **settings.pipeline_kwargs(), generator=...).images

One way of generating the image of a prompt row (``run_pipeline``): each row's initial
noise from its own CPU generator seeded with the row's seed, rows batched in a fixed plan
(``plan_batches``), classifier-free guidance batched by the pipeline. The evaluator's
images, the attacks' in-loop checks and RECE's validation all go through it, so an
adversarial prompt checked inside an attack and replayed by ``erase-eval`` is generated
alike. Rows are anything with ``index``, ``prompt``, ``seed`` and ``guidance``
attributes (``erasure.eval.prompts.PromptRow``).
"""

from __future__ import annotations

import inspect
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Protocol

import torch

from .errors import ErasureError

DEFAULT_BATCH_SIZE = 8
# diffusers' Stable Diffusion pipelines refuse sizes that are not multiples of 8,
# whatever the VAE's own downscaling factor (mini-sd's is 4).
PIPELINE_SIZE_MULTIPLE = 8


@dataclass(frozen=True)
class GenerationSettings:
    """How images are generated; all but ``batch_size`` are part of each image's record.

    Attributes:
        num_inference_steps: denoising steps of the pipeline's own scheduler.
        guidance_scale: classifier-free guidance (0 or anything up to 1: none), for
            prompts without a guidance of their own.
        resolution: image height and width in pixels.
        dtype: the pipeline's dtype, e.g. ``"float32"``.
        scheduler: the scheduler's class name.
        batch_size: prompts per pipeline call.
    """

    num_inference_steps: int
    guidance_scale: float
    resolution: int
    dtype: str
    scheduler: str
    batch_size: int = DEFAULT_BATCH_SIZE

    def record(self) -> dict:
        """The settings that decide an image (everything but ``batch_size``)."""
        values = asdict(self)
        values.pop("batch_size")
        return values

    def pipeline_kwargs(self, guidance_scale: float | None = None) -> dict:
        """Keyword arguments of a diffusers pipeline call.

        Args:
            guidance_scale: a prompt's own guidance, in place of ``self.guidance_scale``.
        """
        return {
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale if guidance_scale is None else guidance_scale,
            "height": self.resolution,
            "width": self.resolution,
        }


def generation_settings(
    pipe,
    *,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    resolution: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    model: str | None = None,
) -> GenerationSettings:
    """The settings given, else the model's ``erasure_defaults.json``, else the pipeline's
    own defaults and native resolution; checked (one-line ``ErasureError`` naming the fix).

    Args:
        pipe: a diffusers text-to-image pipeline.
        num_inference_steps: denoising steps (at least 1), or ``None``.
        guidance_scale: classifier-free guidance (finite, at least 0; 0 means none), or ``None``.
        resolution: image side in pixels (a positive multiple of 8, and of the VAE's
            downscaling factor), or ``None``.
        batch_size: prompts per pipeline call (at least 1).
        model: where to look for ``erasure_defaults.json`` (a bundled name or a folder);
            default: ``pipe.name_or_path``.
    """
    from .loading import generation_defaults

    check_generation_values(num_inference_steps, guidance_scale, resolution, batch_size)
    defaults = generation_defaults(model if model is not None else pipe.name_or_path)
    settings = GenerationSettings(
        num_inference_steps=int(_first_given(num_inference_steps, defaults.get("num_inference_steps"),
                                             _call_default(pipe, "num_inference_steps"))),
        guidance_scale=float(_first_given(guidance_scale, defaults.get("guidance_scale"), _call_default(pipe, "guidance_scale"))),
        resolution=int(_first_given(resolution, defaults.get("resolution"), native_resolution(pipe))),
        dtype=str(pipe.unet.dtype).replace("torch.", ""),
        scheduler=type(pipe.scheduler).__name__,
        batch_size=int(batch_size),
    )
    check_generation_values(settings.num_inference_steps, settings.guidance_scale, settings.resolution, settings.batch_size)
    multiple = math.lcm(PIPELINE_SIZE_MULTIPLE, pipe.vae_scale_factor)
    if settings.resolution % multiple:
        raise ErasureError(f"--resolution {settings.resolution} is not a multiple of {multiple}: pass a multiple of "
                           f"{multiple} (this model's native size is {native_resolution(pipe)})")
    return settings


def check_generation_values(
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    resolution: int | None = None,
    batch_size: int | None = None,
) -> None:
    """Refuse settings no pipeline call can use, before anything is loaded or generated.

    Args:
        num_inference_steps, guidance_scale, resolution, batch_size: as for
            ``generation_settings``; ``None`` is not checked.
    """
    if num_inference_steps is not None and not (_is_int(num_inference_steps) and num_inference_steps >= 1):
        raise ErasureError(f"--steps {num_inference_steps} is not a whole number of at least 1: pass e.g. --steps 50")
    if guidance_scale is not None and not (_is_number(guidance_scale) and math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise ErasureError(f"--guidance {guidance_scale} is not a finite number >= 0: pass e.g. --guidance 7.5 "
                           "(0 turns classifier-free guidance off)")
    if resolution is not None and not (_is_int(resolution) and resolution >= 1 and resolution % PIPELINE_SIZE_MULTIPLE == 0):
        raise ErasureError(f"--resolution {resolution} is not a positive multiple of {PIPELINE_SIZE_MULTIPLE} pixels: "
                           f"pass e.g. --resolution 512, or leave it out for the model's own")
    if batch_size is not None and not (_is_int(batch_size) and batch_size >= 1):
        raise ErasureError(f"--batch-size {batch_size} is not a whole number of at least 1: pass e.g. --batch-size 8")


def native_resolution(pipe) -> int:
    """The image side the model was built for, in pixels."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def _call_default(pipe, name: str):
    """The default of ``pipe(...)``'s argument ``name`` (e.g. SDXL's guidance 5.0)."""
    return inspect.signature(type(pipe).__call__).parameters[name].default


def _first_given(*values):
    return next(value for value in values if value is not None)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---- generating rows ----


class Conditioning(Protocol):
    """What replaces the rows' prompts in a pipeline call (an attack's embeddings or tokens)."""

    def pipeline_inputs(self, pipe, rows: list) -> dict:
        """Keyword arguments of ``pipe(...)`` in place of ``prompt=`` for ``rows``."""


def row_guidance(row, settings: GenerationSettings) -> float:
    """The row's own guidance, else the settings' (0 is a guidance, not a missing one)."""
    return row.guidance if row.guidance is not None else settings.guidance_scale


def plan_batches(rows: list, settings: GenerationSettings) -> list[list]:
    """A fixed plan: rows sorted by guidance (one value per pipeline call), then chunked."""
    ordered = sorted(rows, key=lambda row: (row_guidance(row, settings), row.index))
    batches, current = [], []
    for row in ordered:
        if current and (len(current) == settings.batch_size
                        or row_guidance(current[0], settings) != row_guidance(row, settings)):
            batches.append(current)
            current = []
        current.append(row)
    return batches + ([current] if current else [])


@torch.no_grad()
def run_pipeline(pipe, batch: list, settings: GenerationSettings, conditioning: Conditioning | None = None):
    """One pipeline call for a batch of rows that share a guidance scale (``plan_batches``):
    each row's noise from its own seed, classifier-free guidance batched by the pipeline.

    Args:
        pipe: the pipeline.
        batch: rows of one guidance scale.
        settings: the generation settings.
        conditioning: generate from what it gives instead of the rows' prompts.
    """
    generators = [torch.Generator("cpu").manual_seed(row.seed) for row in batch]
    text = {"prompt": [row.prompt for row in batch]} if conditioning is None else conditioning.pipeline_inputs(pipe, batch)
    return pipe(
        **text,
        **settings.pipeline_kwargs(row_guidance(batch[0], settings)),
        generator=generators,
        output_type="pil",
    ).images


def generate_in_memory(pipe, rows: list, settings: GenerationSettings, conditioning: Conditioning | None = None) -> list:
    """The images of ``rows`` as PIL images, in row order, written nowhere: the seeds and
    batch plan of ``erase-eval``.

    Args:
        pipe: a diffusers text-to-image pipeline (its weights as they should be).
        rows: the prompt rows.
        settings: from ``generation_settings``.
        conditioning: generate from what it gives instead of the rows' prompts.
    """
    images = {}
    with quiet(pipe):
        for batch in plan_batches(rows, settings):
            images.update(zip((row.index for row in batch), run_pipeline(pipe, batch, settings, conditioning)))
    return [images[row.index] for row in rows]


@contextmanager
def quiet(pipe):
    """Silence the pipeline's per-step progress bar (ours count images), then restore it."""
    previous = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(**{**previous, "disable": True})
    try:
        yield
    finally:
        pipe.set_progress_bar_config(**previous)
