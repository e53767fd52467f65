"""Write tune-pairs.csv: a tuning set for erasing the six pairs of ``pairs/erase-6.csv``.

    python scripts/advunlearn_prompts/tune_pairs.py

Two phrasings that neither the benchmark's pair sets nor AdvUnlearn's pair templates use
("a drawing of a <size> <colour> <shape>", "a photo of a <colour> <shape> on a <bg>
background"), so that a schedule chosen here is reported on prompts it was not chosen
on. Each erased pair three times in each phrasing (36 rows), each neighbour pair (a
shape or a colour shared with an erased pair) and each far pair (neither) once in each
(36 and 24 rows); sizes and backgrounds from one fixed random stream; evaluation seeds
7700 on, which no other prompt set uses.
"""

from __future__ import annotations

import random
from pathlib import Path

from erasure.eval.prompts import write_prompt_csv
from erasure.world import BACKGROUNDS, COLOURS, SHAPES, SIZES
from erasure.world.captions import phrase

FOLDER = Path(__file__).parent
FIRST_SEED = 7700
ERASED = [(colour, shape) for colour in ("red", "green", "blue") for shape in ("circle", "square")]
PHRASINGS = ("a drawing of a {size} {c} {s}", "a photo of a {c} {s} on a {bg} background")
COPIES = {"erased": 3, "neighbour": 1, "far": 1}
FIELDS = ["case_number", "prompt", "evaluation_seed", "evaluation_guidance", "class", "type", "phrasing", "template"]


def kind_of(colour: str, shape: str) -> str:
    """``erased``, ``neighbour`` (a colour or shape shared with an erased pair) or ``far``."""
    if (colour, shape) in ERASED:
        return "erased"
    shared = any(colour == c or shape == s for c, s in ERASED)
    return "neighbour" if shared else "far"


def main() -> None:
    draw = random.Random(FIRST_SEED)
    rows = []
    for template in PHRASINGS:
        for colour in COLOURS:
            for shape in SHAPES:
                kind = kind_of(colour, shape)
                for _ in range(COPIES[kind]):
                    values = {"c": colour, "s": shape, "size": draw.choice(SIZES), "bg": draw.choice(BACKGROUNDS)}
                    rows.append({"case_number": len(rows), "prompt": phrase(template, **values),
                                 "evaluation_seed": FIRST_SEED + len(rows), "evaluation_guidance": "",
                                 "class": f"{colour} {shape}", "type": kind,
                                 "phrasing": "held-out" if kind == "erased" else "", "template": template})
    write_prompt_csv(FOLDER / "tune-pairs.csv", rows, FIELDS)


if __name__ == "__main__":
    main()
