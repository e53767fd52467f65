"""Datasets of rendered scenes with their labels, reproducible from a seed.

Scene ``i`` of a dataset with seed ``s`` is drawn from ``np.random.default_rng([s, i])``,
so any single item can be regenerated without rendering the others, and datasets with
different seeds (train vs held-out) never share a random stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from .scenes import COLOURS, SHAPES, STYLES, Scene, render_scene, sample_scene

NONE_SHAPE = len(SHAPES)  # index of the "none" class of the shape label (empty scene)
SHAPE_CLASSES = SHAPES + ("none",)

# Seeds of the standard splits. Every training script uses TRAIN_SEED; tests and
# reported accuracies use HELD_OUT_SEED, which no model ever trains on.
TRAIN_SEED = 0
HELD_OUT_SEED = 1


@dataclass
class WorldData:
    """Rendered scenes: ``images`` is uint8 (N, H, W, 3)."""

    scenes: list[Scene]
    images: np.ndarray

    def __len__(self) -> int:
        return len(self.scenes)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def sample_scenes(n: int, seed: int, **fixed) -> list[Scene]:
    """Scenes 0..n-1 of the dataset with this seed (``fixed`` as in ``sample_scene``)."""
    return [sample_scene(scene_rng(seed, i), **fixed) for i in range(n)]


def render_dataset(n: int, seed: int, size: int = 32, cache_dir: str | Path | None = None, **fixed) -> WorldData:
    """Sample and render ``n`` scenes.

    Args:
        n: number of scenes.
        seed: dataset seed (``TRAIN_SEED``, ``HELD_OUT_SEED``, or any other).
        size: image side in pixels.
        cache_dir: if given, the rendered images are stored there (as .npy) and
            reused; scenes are always re-sampled, which is cheap and exact.
        **fixed: attributes fixed for every scene, as in ``sample_scene``.
    """
    scenes = sample_scenes(n, seed, **fixed)
    cache = None
    if cache_dir is not None:
        key = "_".join(f"{k}-{v}" for k, v in sorted(fixed.items()))
        cache = Path(cache_dir) / f"world_n{n}_s{seed}_px{size}{'_' + key if key else ''}.npy"
        if cache.exists():
            return WorldData(scenes, np.load(cache))
    images = np.stack([np.asarray(render_scene(s, size)[0]) for s in scenes])
    if cache is not None:
        with atomic_path(cache) as tmp, open(tmp, "wb") as file:
            np.save(file, images)  # to a file object: np.save would append ".npy" to a path
    return WorldData(scenes, images)


def scene_labels(scene: Scene) -> dict[str, np.ndarray]:
    """Classifier targets of one scene.

    ``shape``, ``colour``, ``style``: the single object's class, ``shape`` = "none"
    for an empty scene, -1 (ignored) where not defined (several objects; colour and
    style of an empty scene). ``has_shape``, ``has_colour``: multi-hot presence of
    each shape and colour, defined for every scene.
    """
    objs = scene.objects
    single = len(objs) == 1
    has_shape = np.zeros(len(SHAPES), dtype=np.float32)
    has_colour = np.zeros(len(COLOURS), dtype=np.float32)
    for o in objs:
        has_shape[SHAPES.index(o.shape)] = 1
        has_colour[COLOURS.index(o.colour)] = 1
    shape = SHAPES.index(objs[0].shape) if single else (NONE_SHAPE if not objs else -1)
    return {
        "shape": np.int64(shape),
        "colour": np.int64(COLOURS.index(objs[0].colour) if single else -1),
        "style": np.int64(STYLES.index(objs[0].style) if single else -1),
        "has_shape": has_shape,
        "has_colour": has_colour,
    }


def stack_labels(scenes: list[Scene]) -> dict[str, np.ndarray]:
    """``scene_labels`` of many scenes, stacked per key."""
    per_scene = [scene_labels(s) for s in scenes]
    return {k: np.stack([p[k] for p in per_scene]) for k in per_scene[0]}
