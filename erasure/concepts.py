"""Concepts as users write them: ``"airplane, car"``, ``"Van Gogh; Monet"``, ``"cat->dog"``.

Concept text is plain text: it reaches prompts, the terminal and the weights' metadata,
so control characters (ANSI escapes, line breaks, C1 codes) and invisible formatting
characters (bidirectional overrides, zero-width spaces) are refused, not passed on.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .errors import ErasureError
from .paths import read_text_file

CONCEPT_TYPES = ("object", "style", "celebrity", "nudity")
MAPPING_ARROW = "->"


@dataclass(frozen=True)
class Concept:
    """A concept to erase and, optionally, the concept it should become.

    Attributes:
        text: the concept as it appears in prompts (``"airplane"``, ``"Van Gogh"``).
        target: what the concept should map to; ``None`` means the method's default
            guide for the concept type (``""`` for objects and nudity in UCE).
    """

    text: str
    target: str | None = None

    def __str__(self) -> str:
        return self.text if self.target is None else f"{self.text}{MAPPING_ARROW}{self.target}"


# Control (Cc), format (Cf), separator (Zl, Zp) and surrogate (Cs: bytes that were not
# UTF-8) characters; the zero-width joiner stays, emoji sequences need it.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs"}
_ALLOWED = {"\u200d"}


def shown(text: str, limit: int = 60) -> str:
    """``text`` quoted for a one-line message: escapes visible, long text shortened."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def check_text(text: str, what: str = "concept") -> str:
    """Return ``text`` if it is plain text; raise ``ErasureError`` naming the first
    control or invisible character otherwise.

    Args:
        text: a concept, target or prompt as the user gave it.
        what: what it is, for the message.
    """
    for char in text:
        if unicodedata.category(char) in _REFUSED_CATEGORIES and char not in _ALLOWED:
            raise ErasureError(
                f"{what} {shown(text)} contains the control or invisible character U+{ord(char):04X}: remove it "
                "(concepts are plain text; separate several with commas)"
            )
    return text


def parse_concepts(spec: str | list[str]) -> list[Concept]:
    """Split a comma- or semicolon-separated list; ``"a->b"`` maps ``a`` to ``b``.

    Args:
        spec: ``"airplane, car; cat->dog"`` or a list of single concepts.
    """
    items = re.split(r"[;,]", spec) if isinstance(spec, str) else list(spec)
    concepts = []
    for item in items:
        item = check_text(str(item))
        if item.count(MAPPING_ARROW) > 1:
            raise ErasureError(
                f"concept {shown(item)} has more than one {MAPPING_ARROW!r}: write concept{MAPPING_ARROW}target, "
                "e.g. cat->dog"
            )
        text, _, target = item.partition(MAPPING_ARROW)
        text = text.strip()
        if not text:
            raise ErasureError(f"empty concept in {shown(str(spec))}: give at least one name, e.g. --concepts airplane")
        concepts.append(Concept(text, target.strip() if _ else None))
    seen = set()
    for concept in concepts:
        if concept.text.lower() in seen:
            raise ErasureError(f"concept {shown(concept.text)} is given twice: list each concept once")
        seen.add(concept.text.lower())
    return concepts


def read_concept_file(path: str | Path) -> list[Concept]:
    """One concept per line (``#`` starts a comment), for erasing tens or hundreds at once.

    Args:
        path: a UTF-8 text file.
    """
    path = Path(path)
    text = read_text_file(path, "concepts file")
    # split("\n"), not splitlines(): that would also split at form feeds and other
    # control characters, which must be refused, not turned into extra concepts.
    lines = [line.rstrip("\r").split("#", 1)[0].strip() for line in text.split("\n")]
    names = [line for line in lines if line]
    if not names:
        raise ErasureError(f"{path} lists no concepts: write one per line")
    return parse_concepts(names)


def check_concept_type(concept_type: str) -> str:
    if concept_type not in CONCEPT_TYPES:
        raise ErasureError(f"unknown concept type {concept_type!r}: use one of {', '.join(CONCEPT_TYPES)}")
    return concept_type


def slug(concepts: list[Concept], max_length: int = 60) -> str:
    """A file-name-safe summary of concepts; the strings themselves never become paths."""
    text = "_".join(re.sub(r"[^a-z0-9]+", "-", c.text.lower()).strip("-") for c in concepts)
    return (text or "concepts")[:max_length].strip("_-")
