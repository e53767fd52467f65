"""One ``generation_settings`` for the package (``erasure.generation``): the evaluator,
MACE's concept images and RECE's validation read the same defaults and treat the same
values alike; guidance 0 (no classifier-free guidance) is a value, never "the default"."""

from __future__ import annotations

import math

import pytest
import torch

from erasure.concept_images import generate_latents
from erasure.errors import ErasureError
from erasure.generation import check_generation_values, generation_settings
from erasure.tiny import build_tiny_pipeline



def test_given_values_win_over_the_models_defaults_and_zero_guidance_is_given(sd1_pipe):
    defaults = generation_settings(sd1_pipe, model="mini-sd")  # mini-sd's erasure_defaults.json: 25 steps, 4.5, 32 px
    assert (defaults.num_inference_steps, defaults.guidance_scale, defaults.resolution) == (25, 4.5, 32)
    unguided = generation_settings(sd1_pipe, model="mini-sd", guidance_scale=0)
    assert unguided.guidance_scale == 0.0 and unguided.pipeline_kwargs()["guidance_scale"] == 0.0
    given = generation_settings(sd1_pipe, model="mini-sd", num_inference_steps=3, guidance_scale=2.0, resolution=64)
    assert given.pipeline_kwargs() == {"num_inference_steps": 3, "guidance_scale": 2.0, "height": 64, "width": 64}


@pytest.mark.parametrize("family, guidance", [("sd1", 7.5), ("sdxl", 5.0)])
def test_without_model_defaults_the_pipelines_own_apply(family, guidance):
    pipe = build_tiny_pipeline(family)
    settings = generation_settings(pipe, model="tiny")
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert (settings.num_inference_steps, settings.guidance_scale, settings.resolution) == (50, guidance, native)


def test_concept_images_and_the_evaluator_generate_alike_at_guidance_zero(sd1_pipe, monkeypatch):
    """MACE's images of a concept go through the same settings: at guidance 0 the UNet sees
    the images alone (no unconditional half), as in the evaluator."""
    from erasure.eval.generate import generate_in_memory
    from erasure.eval.prompts import PromptRow

    settings = generation_settings(sd1_pipe, model="mini-sd", num_inference_steps=2, guidance_scale=0, resolution=32)
    batch_sizes = []
    real_forward = sd1_pipe.unet.forward

    def counting_forward(sample, *args, **kwargs):
        batch_sizes.append(sample.shape[0])
        return real_forward(sample, *args, **kwargs)

    monkeypatch.setattr(sd1_pipe.unet, "forward", counting_forward)
    latents = generate_latents(sd1_pipe, "a circle", 3, torch.Generator().manual_seed(0), settings)
    assert latents.shape[0] == 3 and batch_sizes == [3, 3]
    batch_sizes.clear()
    generate_in_memory(sd1_pipe, [PromptRow(i, "a circle", i) for i in range(3)], settings)
    assert batch_sizes == [3, 3]


@pytest.mark.parametrize("values, message", [
    ({"guidance_scale": math.nan}, "--guidance nan is not a finite number >= 0"),
    ({"guidance_scale": math.inf}, "--guidance inf is not a finite number >= 0"),
    ({"guidance_scale": -5.0}, "--guidance -5.0 is not a finite number >= 0"),
    ({"guidance_scale": True}, "--guidance True is not a finite number >= 0"),
    ({"num_inference_steps": 0}, "--steps 0 is not a whole number of at least 1"),
    ({"num_inference_steps": 2.5}, "--steps 2.5 is not a whole number of at least 1"),
    ({"resolution": -8}, "--resolution -8 is not a positive multiple of 8 pixels"),
    ({"resolution": 0}, "--resolution 0 is not a positive multiple of 8 pixels"),
    ({"resolution": 36}, "--resolution 36 is not a positive multiple of 8 pixels"),
    ({"batch_size": 0}, "--batch-size 0 is not a whole number of at least 1"),
])
def test_unusable_values_are_refused_with_the_fix(sd1_pipe, values, message):
    with pytest.raises(ErasureError, match=message.replace("+", r"\+")):
        check_generation_values(**values)
    with pytest.raises(ErasureError, match=message.replace("+", r"\+")):
        generation_settings(sd1_pipe, **values)
