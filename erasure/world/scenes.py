"""Procedural scenes of coloured shapes: the small world the bundled models know.

A scene is a background plus zero to three non-overlapping shapes. Every random choice
is made in ``sample_scene`` and stored in the ``Scene``, so that ``render_scene`` is a
pure function: the same scene always gives the same pixels and masks, and a scene is
reproducible from the seed of the generator that sampled it.

Shapes are drawn at 4x the output resolution and box-filtered down, which gives
anti-aliased edges (the models then see soft edges, as in photographs, not aliasing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
STYLES = ("filled", "outlined")
SIZES = ("small", "large")
BACKGROUNDS = ("white", "grey", "cream", "black", "gradient")

# Base RGB per colour. Each drawn object jitters around its base by up to
# COLOUR_JITTER per channel: enough variety that "red" is a range, not one value,
# small enough that neighbours (red/orange/yellow, blue/purple) never meet.
COLOUR_RGB = {
    "red": (215, 30, 35),
    "green": (35, 165, 55),
    "blue": (35, 75, 220),
    "yellow": (240, 210, 25),
    "purple": (140, 45, 180),
    "orange": (245, 130, 25),
}
COLOUR_JITTER = 15

# Backgrounds are neutral (or a pale gradient) so that no background can be mistaken
# for an object colour. White is the most common, as in the captions' default.
BACKGROUND_RGB = {"white": (250, 250, 250), "grey": (175, 175, 175), "cream": (240, 230, 205), "black": (20, 20, 20)}
BACKGROUND_WEIGHTS = (0.4, 0.15, 0.15, 0.15, 0.15)

# Radii as fractions of the image side. One shape alone may be small or large;
# in scenes with two or three shapes each is small so that they fit side by side.
RADIUS_RANGE = {"small": (0.17, 0.23), "large": (0.28, 0.38)}
CROWDED_RADIUS_RANGE = {2: (0.15, 0.2), 3: (0.13, 0.17)}  # still "small" in captions
OUTLINE_WIDTH = 0.06  # outline stroke, fraction of the image side (about 2 px at 32)
MAX_ROTATION = 15.0  # degrees either way; keeps "star" and "triangle" upright-ish

# How many shapes a scene has: mostly one (the evaluation's case), some empty scenes
# (so that "nothing" is a concept the model can fall back to), some with two or three
# (so that a shape can be erased while its neighbour is kept).
NUM_OBJECTS_WEIGHTS = {0: 0.12, 1: 0.60, 2: 0.18, 3: 0.10}

SUPERSAMPLE = 4


@dataclass(frozen=True)
class SceneObject:
    """One shape. Coordinates and radius are fractions of the image side."""

    shape: str
    colour: str
    style: str
    size: str
    x: float
    y: float
    radius: float
    rotation: float  # degrees
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    """A background and its objects (drawn in order, never overlapping)."""

    background: str
    objects: tuple[SceneObject, ...]
    background_rgb: tuple[tuple[int, int, int], tuple[int, int, int]]  # top, bottom colour


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _sample_background(rng: np.random.Generator, name: str | None = None):
    name = name or str(rng.choice(BACKGROUNDS, p=BACKGROUND_WEIGHTS))
    if name == "gradient":
        # two pale colours, top to bottom: bright enough to read as "background"
        top = tuple(int(v) for v in rng.integers(185, 256, size=3))
        bottom = tuple(int(v) for v in rng.integers(185, 256, size=3))
        return name, (top, bottom)
    base = _jitter(rng, BACKGROUND_RGB[name], 6)
    return name, (base, base)


def _place(rng: np.random.Generator, radii: list[float], tries: int = 1000) -> list[tuple[float, float]]:
    """Centres keeping every shape inside the frame and apart from the others."""
    for _ in range(tries):
        centres = [(rng.uniform(r + 0.01, 1 - r - 0.01), rng.uniform(r + 0.01, 1 - r - 0.01)) for r in radii]
        ok = all(
            math.dist(centres[i], centres[j]) > radii[i] + radii[j] + 0.02
            for i in range(len(radii))
            for j in range(i)
        )
        if ok:
            return centres
    raise RuntimeError(f"could not place {len(radii)} shapes without overlap")


def sample_scene(
    rng: np.random.Generator,
    num_objects: int | None = None,
    shape: str | None = None,
    colour: str | None = None,
    style: str | None = None,
    size: str | None = None,
    background: str | None = None,
) -> Scene:
    """Draw a random scene; any argument given fixes that attribute.

    Args:
        rng: the source of every random choice (``np.random.default_rng(seed)``).
        num_objects: 0 to 3; drawn from ``NUM_OBJECTS_WEIGHTS`` if None.
        shape, colour, style, size: fix the attribute of every object in the scene.
        background: one of ``BACKGROUNDS``.
    """
    if num_objects is None:
        counts, weights = zip(*NUM_OBJECTS_WEIGHTS.items())
        num_objects = int(rng.choice(counts, p=weights))
    bg_name, bg_rgb = _sample_background(rng, background)
    specs = []
    for _ in range(num_objects):
        obj_size = size or ("small" if num_objects > 1 else str(rng.choice(SIZES)))
        specs.append(
            dict(
                shape=shape or str(rng.choice(SHAPES)),
                colour=colour or str(rng.choice(COLOURS)),
                style=style or str(rng.choice(STYLES)),
                size=obj_size,
                radius=float(rng.uniform(*(CROWDED_RADIUS_RANGE.get(num_objects) or RADIUS_RANGE[obj_size]))),
            )
        )
    centres = _place(rng, [s["radius"] for s in specs]) if specs else []
    objects = tuple(
        SceneObject(
            x=float(cx),
            y=float(cy),
            rotation=float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)),
            rgb=_jitter(rng, COLOUR_RGB[s["colour"]], COLOUR_JITTER),
            **s,
        )
        for s, (cx, cy) in zip(specs, centres)
    )
    return Scene(background=bg_name, objects=objects, background_rgb=bg_rgb)


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return points @ rot.T


def shape_outline(shape: str, n: int = 64) -> np.ndarray:
    """The shape's polygon in unit coordinates (circumradius about 1, y pointing down)."""
    if shape == "circle":
        t = np.linspace(0, 2 * math.pi, n, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "square":
        s = 0.8  # half side: a square of circumradius 1 looks too big next to a circle
        return np.array([[-s, -s], [s, -s], [s, s], [-s, s]])
    if shape == "triangle":
        t = -math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        # a little larger than its circumradius suggests, so that it reads at 32 px
        return 1.15 * (np.stack([np.cos(t), np.sin(t)], axis=1) + [0, 0.15])
    if shape == "star":
        t = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1) + [0, 0.08]
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, n, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y + 2.5], axis=1) / 16.5
    if shape == "cross":
        a, b = 0.3, 0.95  # half arm width, arm length: a plus sign, not an "x"
        return np.array(
            [[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a]]
        )
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _object_coverage(obj: SceneObject, side: int) -> Image.Image:
    """Greyscale image (side x side) of where the object's paint goes."""
    canvas = Image.new("L", (side, side), 0)
    points = _rotate(shape_outline(obj.shape), obj.rotation) * obj.radius * side
    points = points + [obj.x * side, obj.y * side]
    draw = ImageDraw.Draw(canvas)
    xy = [tuple(p) for p in points]
    if obj.style == "filled":
        draw.polygon(xy, fill=255)
    else:
        draw.polygon(xy, outline=255, width=max(1, round(OUTLINE_WIDTH * side)))
    return canvas


def _background(scene: Scene, side: int) -> np.ndarray:
    top, bottom = (np.array(c, dtype=np.float32) for c in scene.background_rgb)
    ramp = np.linspace(0.0, 1.0, side, dtype=np.float32)[:, None, None]
    return np.broadcast_to(top + (bottom - top) * ramp, (side, side, 3)).copy()


def render_scene(scene: Scene, size: int = 32) -> tuple[Image.Image, np.ndarray]:
    """Draw a scene.

    Args:
        scene: from ``sample_scene``.
        size: output side in pixels (32 for the bundled models).

    Returns:
        The RGB image, and a boolean array (num_objects, size, size): pixel (i, j)
        of mask k is True where object k covers at least half of the pixel.
    """
    side = size * SUPERSAMPLE
    image = _background(scene, side)
    masks = []
    for obj in scene.objects:
        alpha = np.asarray(_object_coverage(obj, side), dtype=np.float32)[..., None] / 255.0
        image = image * (1 - alpha) + np.array(obj.rgb, dtype=np.float32) * alpha
        masks.append(alpha[..., 0])
    full = Image.fromarray(np.clip(image + 0.5, 0, 255).astype(np.uint8))
    small = full.resize((size, size), Image.Resampling.BOX)
    cover = [np.asarray(Image.fromarray((m * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BOX)) for m in masks]
    mask_array = np.stack(cover) >= 128 if cover else np.zeros((0, size, size), dtype=bool)
    return small, mask_array
