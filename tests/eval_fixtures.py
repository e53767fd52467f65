"""Fixtures shared by the evaluator's test modules: a random CLIP folder standing in for
real CLIP, and erased weights of the tiny SD 1.x pipeline. Import the ones a module uses
(``from eval_fixtures import erased_file, tiny_clip``)."""

from __future__ import annotations

import pytest
import torch

import erasure
from erasure.tiny import build_tiny_pipeline

STEPS = dict(num_inference_steps=2, resolution=32)  # generation small enough for a test


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random transformers CLIPModel folder (32x32 images), standing in for real CLIP."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    torch.manual_seed(0)
    text = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                              num_attention_heads=4)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def erased_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "circle.safetensors"
    erasure.erase(build_tiny_pipeline("sd1"), "uce", "circle").save(path)
    return path
