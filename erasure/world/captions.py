"""Captions for world scenes, and the standard prompts used to evaluate erasure.

Captions vary in template, in which attributes they mention, and in wording (synonyms),
so that a model trained on them learns each concept from many phrasings. Synonyms
matter for evaluation: MACE measures whether erasing "circle" also erases "disk".

Every caption comes with its ``Mentions``: the attributes it states. An image matches
a caption when it agrees with everything the caption states; mini-clip's contrastive
training uses that to avoid pushing apart an image and a caption that describes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .scenes import BACKGROUNDS, COLOURS, SHAPES, SIZES, STYLES, Scene

# Alternative names. Synonyms never contain the word they stand for, so that a
# synonym prompt tests the concept, not the token.
SYNONYMS = {
    "circle": ["disk", "round shape"],
    "square": ["box", "block"],
    "triangle": ["wedge", "three-sided shape"],
    "star": ["pentagram", "five-pointed shape"],
    "heart": ["love symbol", "valentine"],
    "cross": ["plus sign", "plus symbol"],
}
COLOUR_SYNONYMS = {"purple": ["violet"]}
STYLE_WORDS = {"filled": ["filled", "solid"], "outlined": ["outlined", "hollow"]}
SIZE_WORDS = {"small": ["small", "little"], "large": ["large", "big"]}
BACKGROUND_WORDS = {"white": ["white"], "grey": ["grey", "gray"], "cream": ["cream"], "black": ["black"], "gradient": ["gradient"]}

SYNONYM_PROB = 0.3  # how often a shape (or colour) with synonyms is called by one

# Wrappers around the noun phrase of one object ("a small red circle").
SINGLE_TEMPLATES = (
    ("{np}", 4),
    ("a photo of {np}", 2),
    ("a drawing of {np}", 1),
    ("an image of {np}", 1),
    ("a picture of {np}", 1),
    ("{np} on a {bg} background", 2),
    ("a photo of {np} on a {bg} background", 1),
)
EMPTY_TEMPLATES = (
    "an empty {bg} background",
    "a plain {bg} background",
    "a blank {bg} image",
    "a blank canvas",
    "an empty scene",
    "an empty picture",
    "nothing",
)
JOINERS = (" and ", " next to ", " beside ")


@dataclass(frozen=True)
class Mentions:
    """What a caption states: the number of objects, per object the attributes
    named (None where the caption leaves it open), and possibly the background."""

    objects: tuple[dict, ...]
    background: str | None = None


def with_article(phrase: str) -> str:
    """``"a red circle"``, ``"an orange star"``."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def shape_word(shape: str, rng: np.random.Generator) -> str:
    if rng.random() < SYNONYM_PROB:
        return _choice(rng, SYNONYMS[shape])
    return shape


def colour_word(colour: str, rng: np.random.Generator) -> str:
    if colour in COLOUR_SYNONYMS and rng.random() < SYNONYM_PROB:
        return _choice(rng, COLOUR_SYNONYMS[colour])
    return colour


def _noun_phrase(obj, rng, p_size: float, p_style: float, p_colour: float) -> tuple[str, dict]:
    """``"small outlined red circle"`` (no article) and the attributes it names."""
    said = {"shape": obj.shape, "colour": None, "style": None, "size": None}
    words = []
    if rng.random() < p_size:
        words.append(_choice(rng, SIZE_WORDS[obj.size]))
        said["size"] = obj.size
    if rng.random() < p_style:
        words.append(_choice(rng, STYLE_WORDS[obj.style]))
        said["style"] = obj.style
    if rng.random() < p_colour:
        words.append(colour_word(obj.colour, rng))
        said["colour"] = obj.colour
    words.append(shape_word(obj.shape, rng))
    return " ".join(words), said


def _weighted(rng, templates):
    texts, weights = zip(*templates)
    p = np.array(weights, dtype=float)
    return texts[int(rng.choice(len(texts), p=p / p.sum()))]


def caption_with_mentions(scene: Scene, rng: np.random.Generator) -> tuple[str, Mentions]:
    """A random caption of the scene and what it states.

    Args:
        scene: from ``sample_scene``.
        rng: the source of every choice of template and wording.
    """
    bg_word = _choice(rng, BACKGROUND_WORDS[scene.background])
    if not scene.objects:
        template = _choice(rng, EMPTY_TEMPLATES)
        background = scene.background if "{bg}" in template else None
        return template.format(bg=bg_word), Mentions((), background)
    if len(scene.objects) == 1:
        np_text, said = _noun_phrase(scene.objects[0], rng, p_size=0.3, p_style=0.35, p_colour=0.85)
        template = _weighted(rng, SINGLE_TEMPLATES)
        background = scene.background if "{bg}" in template else None
        return template.format(np=with_article(np_text), bg=bg_word), Mentions((said,), background)
    # Two or three objects: list every one, in the scene's (random) order.
    phrases, said = zip(*(_noun_phrase(o, rng, p_size=0.0, p_style=0.2, p_colour=0.9) for o in scene.objects))
    phrases = [with_article(p) for p in phrases]
    if len(phrases) == 2:
        text = phrases[0] + _choice(rng, JOINERS) + phrases[1]
    else:
        text = f"{phrases[0]}, {phrases[1]} and {phrases[2]}"
    background = None
    if rng.random() < 0.2:
        text, background = f"{text} on a {bg_word} background", scene.background
    elif rng.random() < 0.2:
        text = "a photo of " + text
    return text, Mentions(tuple(said), background)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A random caption of the scene (see ``caption_with_mentions``)."""
    return caption_with_mentions(scene, rng)[0]


# ---- matching captions to scenes, as arrays (used by contrastive training) ----

_ATTRS = (("shape", SHAPES), ("colour", COLOURS), ("style", STYLES), ("size", SIZES))
MAX_OBJECTS = 3
CODE_LENGTH = 2 + MAX_OBJECTS * len(_ATTRS)  # count, background, attributes per slot


def encode_mentions(mentions: Mentions) -> np.ndarray:
    """Integer code of a caption's statements; -1 means "not stated"."""
    code = np.full(CODE_LENGTH, -1, dtype=np.int64)
    code[0] = len(mentions.objects)
    if mentions.background is not None:
        code[1] = BACKGROUNDS.index(mentions.background)
    for k, said in enumerate(mentions.objects):
        for a, (name, values) in enumerate(_ATTRS):
            if said[name] is not None:
                code[2 + k * len(_ATTRS) + a] = values.index(said[name])
    return code


def encode_scene(scene: Scene) -> np.ndarray:
    """Integer code of a scene, comparable with ``encode_mentions``."""
    code = np.full(CODE_LENGTH, -2, dtype=np.int64)  # -2: no object in that slot
    code[0] = len(scene.objects)
    code[1] = BACKGROUNDS.index(scene.background)
    for k, obj in enumerate(scene.objects):
        for a, (name, values) in enumerate(_ATTRS):
            code[2 + k * len(_ATTRS) + a] = values.index(getattr(obj, name))
    return code


def matches(caption_codes: np.ndarray, scene_codes: np.ndarray) -> np.ndarray:
    """Boolean (num_scenes, num_captions): scene i agrees with all caption j states."""
    c, s = caption_codes[None, :, :], scene_codes[:, None, :]
    return ((c == -1) | (c == s)).all(axis=-1)


# ---- standard evaluation prompts ----


def object_prompt(shape: str, colour: str | None = None, style: str | None = None) -> str:
    """``"a red circle"``, ``"an outlined circle"``; ``shape`` may be a synonym."""
    words = [w for w in (style, colour) if w] + [shape]
    return with_article(" ".join(words))


def shape_prompts(shape: str) -> list[str]:
    """One prompt per colour naming the shape: ``["a red circle", "a green circle", ...]``."""
    return [object_prompt(shape, colour) for colour in COLOURS]


def synonym_prompts(shape: str) -> list[str]:
    """The prompts of ``shape_prompts`` with each synonym in place of the shape's name."""
    return [object_prompt(word, colour) for word in SYNONYMS[shape] for colour in COLOURS]


def colour_prompts(colour: str) -> list[str]:
    """One prompt per shape in the colour: ``["a red circle", "a red square", ...]``."""
    return [object_prompt(shape, colour) for shape in SHAPES]


def style_prompts(style: str) -> list[str]:
    """One prompt per shape in the style: ``["an outlined circle", ...]``."""
    return [object_prompt(shape, style=style) for shape in SHAPES]


def empty_prompts() -> list[str]:
    """Prompts of the world's "nothing": empty scenes."""
    return ["an empty white background", "a blank canvas", "an empty scene", "a plain grey background"]


def pair_prompts(shape: str, colour: str = "red") -> list[str]:
    """``shape`` beside each other shape, e.g. ``"a red circle and a blue square"``:
    for erasing one concept while keeping another in the same image."""
    others = [s for s in SHAPES if s != shape]
    other_colours = [c for c in COLOURS if c != colour]
    return [
        f"{object_prompt(shape, colour)} and {object_prompt(other, other_colours[i % len(other_colours)])}"
        for i, other in enumerate(others)
    ]


# ---- phrasings: the wording around a prompt's attributes ----


def phrase(template: str, **words: str) -> str:
    """A phrasing filled in, its articles agreeing with the next word.

    ``phrase("a photo of a {size} {c} {s}", size="large", c="orange", s="star")`` is
    ``"a photo of a large orange star"``; ``phrase("a {c} {s}", c="orange", s="star")``
    is ``"an orange star"``.

    Args:
        template: ``{c}`` colour, ``{s}`` shape, ``{style}``, ``{size}``, ``{bg}`` background.
        words: the words to put in.
    """
    return re.sub(r"\ba (?=[aeiou])", "an ", template.format(**words))


_PLACEHOLDERS = {
    **{word: "{s}" for shape in SHAPES for word in (shape, *SYNONYMS[shape])},
    **{word: "{c}" for colour in COLOURS for word in (colour, *COLOUR_SYNONYMS.get(colour, []))},
    **{word: "{style}" for words in STYLE_WORDS.values() for word in words},
    **{word: "{size}" for words in SIZE_WORDS.values() for word in words},
    **{word: "{bg}" for words in BACKGROUND_WORDS.values() for word in words},
}
_WORLD_WORD = re.compile(r"\b(" + "|".join(re.escape(w) for w in sorted(_PLACEHOLDERS, key=len, reverse=True)) + r")\b")


def phrasing_of(prompt: str) -> str:
    """A prompt's phrasing: the template ``phrase`` fills to make it, its world words
    (shape names and synonyms, colours, styles, sizes, backgrounds) replaced by
    placeholders and ``an`` before them written ``a``.

    ``phrasing_of("an image of an orange disk")`` is ``"an image of a {c} {s}"``. Two
    prompts have the same phrasing when they differ only in those words, which is what
    "a phrasing seen in a method's templates" means in the prompt sets.

    Args:
        prompt: a prompt of the shapes world.
    """
    template = _WORLD_WORD.sub(lambda m: _PLACEHOLDERS[m.group(1)], prompt.strip().lower())
    return re.sub(r"\ban (?=\{)", "a ", template)
