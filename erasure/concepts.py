"""Concepts as users write them: ``"airplane, car"``, ``"Van Gogh; Monet"``, ``"cat->dog"``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ErasureError

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


def parse_concepts(spec: str | list[str]) -> list[Concept]:
    """Split a comma- or semicolon-separated list; ``"a->b"`` maps ``a`` to ``b``."""
    items = re.split(r"[;,]", spec) if isinstance(spec, str) else list(spec)
    concepts = []
    for item in items:
        text, _, target = str(item).partition(MAPPING_ARROW)
        text = text.strip()
        if not text:
            raise ErasureError(f"empty concept in {spec!r}: give at least one name, e.g. --concepts airplane")
        concepts.append(Concept(text, target.strip() if _ else None))
    seen = set()
    for concept in concepts:
        if concept.text.lower() in seen:
            raise ErasureError(f"concept {concept.text!r} is given twice: list each concept once")
        seen.add(concept.text.lower())
    return concepts


def read_concept_file(path: str | Path) -> list[Concept]:
    """One concept per line (``#`` starts a comment), for erasing tens or hundreds at once."""
    path = Path(path)
    if not path.is_file():
        raise ErasureError(f"{path}: no such concepts file")
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
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
