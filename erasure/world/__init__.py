"""The shapes world: procedural scenes, their captions, and a classifier of them.

The bundled models (``mini-clip``, ``world-classifier``, ``mini-sd``) are trained on
this world, so that erasure can be measured without downloading Stable Diffusion.
"""

from .captions import (
    SYNONYMS,
    caption,
    caption_with_mentions,
    colour_prompts,
    empty_prompts,
    object_prompt,
    pair_prompts,
    shape_prompts,
    style_prompts,
    synonym_prompts,
)
from .scenes import BACKGROUNDS, COLOURS, SHAPES, SIZES, STYLES, Scene, SceneObject, render_scene, sample_scene

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "SHAPES",
    "SIZES",
    "STYLES",
    "SYNONYMS",
    "Scene",
    "SceneObject",
    "caption",
    "caption_with_mentions",
    "colour_prompts",
    "empty_prompts",
    "object_prompt",
    "pair_prompts",
    "render_scene",
    "sample_scene",
    "shape_prompts",
    "style_prompts",
    "synonym_prompts",
]
