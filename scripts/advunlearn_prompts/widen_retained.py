"""Write choose-seed-240.csv: choose-seed.csv with 180 more retained rows (240 in all).

    python scripts/advunlearn_prompts/widen_retained.py

The seed rule's CLIP check reads the low end of the paired interval of the retained rows'
CLIP change; on choose-seed.csv's 60 rows that interval is about 6 points wide, as wide
as the 3-point target's whole margin. Four times the rows halve it. The new rows use
the six phrasings of the existing ones, each shape in each phrasing six times, with
colours, sizes and backgrounds drawn from one fixed random stream and evaluation seeds
7400-7579, which no other prompt set uses (shapes/circle, the reported set, uses 1000+).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from erasure.world import BACKGROUNDS, COLOURS, SHAPES, SIZES
from erasure.world.captions import phrase

FOLDER = Path(__file__).parent
FIRST_SEED, DRAWS = 7400, 6


def main() -> None:
    with open(FOLDER / "choose-seed.csv", newline="") as source:
        rows = list(csv.DictReader(source))
    fields = list(rows[0])
    phrasings = list(dict.fromkeys(row["template"] for row in rows if row["type"] == "retained"))
    draw = random.Random(FIRST_SEED)
    seed = FIRST_SEED
    for _ in range(DRAWS):
        for template in phrasings:
            for shape in (s for s in SHAPES if s != "circle"):
                values = {"c": draw.choice(COLOURS), "s": shape, "size": draw.choice(SIZES), "bg": draw.choice(BACKGROUNDS)}
                rows.append({**dict.fromkeys(fields, ""), "case_number": str(len(rows)), "class": shape,
                             "prompt": phrase(template, **values), "evaluation_seed": str(seed),
                             "type": "retained", "template": template})
                seed += 1
    with open(FOLDER / "choose-seed-240.csv", "w", newline="") as target:
        writer = csv.DictWriter(target, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
