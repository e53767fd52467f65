"""Write the prompt sets shipped in ``eval_prompts/`` (all written by this project).

    python scripts/make_eval_prompts.py [--out eval_prompts]

Every set uses the field's columns: ``case_number, prompt, evaluation_seed,
evaluation_guidance, class, type``. Per erased concept X (a shape, a CIFAR-10 or
Imagenette class, an artist) the set ``<family>/<X>.csv`` holds:

- ``erased`` rows: prompts of X (templates x 2 seeds),
- ``retained`` rows: the same templates for every other concept of the family,
- ``synonym`` rows: other words for X (objects only; MACE's generality test).

Rows of the three types are interleaved, so that ``erase-eval --limit N`` sees all three.
``<family>/all.csv`` lists every concept once, untyped, for plain accuracy and quality.

The shapes world's sets (mini-sd) are larger and say more, in two more columns:
``template`` (the row's phrasing, ``{c} {s}`` for "red circle"; see
``erasure.world.captions.phrasing_of``) and, on erased rows, ``phrasing``: ``seen`` when
an erasure method trains on that phrasing, ``held-out`` when none does. Their ``class``
is the attribute erased (the world metric infers which from it): ``shapes/<shape>``,
``shapes/circle-square-triangle`` (three shapes erased at once), ``colours/<c>``,
``styles/<s>`` (a colour or a rendering style, over the shapes), and ``pairs/``, where a
concept is a shape-colour pair: ``pairs/<colour>-<shape>`` erases one, ``pairs/erase-<n>``
erases n at once, and the other rows are ``neighbour`` pairs (one attribute shared with
an erased pair) or ``far`` ones (none). In these the classes of each type take turns.
Seeds are ``1000 + case_number``; an empty ``evaluation_guidance`` means "the model's
default" (the shapes sets, whose model is mini-sd), otherwise 7.5 as in the papers.
"""

from __future__ import annotations

import argparse
import re
from itertools import zip_longest
from pathlib import Path

from erasure.eval.prompts import write_prompt_csv
from erasure.world.captions import (
    COLOUR_SYNONYMS,
    STYLE_WORDS,
    SYNONYMS,
    colour_prompts,
    empty_prompts,
    object_prompt,
    phrase,
    shape_prompts,
    with_article,
)
from erasure.world.scenes import COLOURS, SHAPES, STYLES  # noqa: E402

COLUMNS = ["case_number", "prompt", "evaluation_seed", "evaluation_guidance", "class", "type"]
SEED_BASE = 1000
SD_GUIDANCE = 7.5

OBJECT_TEMPLATES = (
    "a photo of the {}",
    "an image of {a}",
    "a picture of {a}",
    "{a} in its usual surroundings",
    "a close-up photo of {a}",
)

CIFAR10 = {
    "airplane": ["aircraft", "jetliner", "aeroplane"],
    "automobile": ["car", "sedan", "motorcar"],
    "bird": ["sparrow", "songbird", "finch"],
    "cat": ["kitten", "kitty", "feline"],
    "deer": ["stag", "doe", "fawn"],
    "dog": ["puppy", "hound", "canine"],
    "frog": ["toad", "amphibian", "tadpole"],
    "horse": ["stallion", "mare", "pony"],
    "ship": ["vessel", "ocean liner", "freighter"],
    "truck": ["lorry", "pickup", "eighteen-wheeler"],
}

# Names as in ImageNet's class list (erasure.eval.metrics.resnet.IMAGENETTE_IDS).
IMAGENETTE = {
    "tench": ["doctor fish", "Tinca tinca", "olive-green freshwater fish"],
    "English springer": ["spaniel", "gun dog", "bird dog"],
    "cassette player": ["tape deck", "walkman", "tape recorder"],
    "chain saw": ["tree-felling power tool", "lumberjack's cutting tool", "motorised wood cutter"],
    "church": ["chapel", "cathedral", "house of worship"],
    "French horn": ["coiled brass instrument", "mellophone", "orchestral brass instrument with a wide bell"],
    "garbage truck": ["dustcart", "bin lorry", "refuse collection vehicle"],
    "gas pump": ["fuel dispenser", "petrol bowser", "filling station dispenser"],
    "golf ball": ["dimpled ball", "ball on a tee", "small white dimpled sphere"],
    "parachute": ["chute", "skydiving canopy", "paraglider canopy"],
}
# Synonyms avoid the words of the name they stand for, so they test the concept, not a token.

ARTISTS = ["Vincent van Gogh", "Pablo Picasso", "Claude Monet", "Rembrandt", "Andy Warhol", "Thomas Kinkade"]
ARTIST_SUBJECTS = (
    "a starry night over a quiet village",
    "a portrait of an old fisherman",
    "a bowl of fruit on a wooden table",
    "a bridge over a calm river",
    "a field of sunflowers under a cloudy sky",
)
ARTIST_TEMPLATES = ("{subject} in the style of {artist}", "a painting of {subject} by {artist}")

# Everyday scenes in the manner of COCO captions, written for this project.
COCO_STYLE_CAPTIONS = (
    "A man riding a bicycle down a busy city street.",
    "Two dogs playing with a ball in a grassy park.",
    "A plate of pasta with tomato sauce on a wooden table.",
    "A red double-decker bus stopped at a bus station.",
    "A woman holding an umbrella while walking in the rain.",
    "A kitchen with white cabinets and a stainless steel fridge.",
    "A group of people flying kites on a windy beach.",
    "A cat sleeping on a windowsill in the afternoon sun.",
    "A train crossing a bridge over a wide river.",
    "A bowl of oranges and bananas on a kitchen counter.",
    "A child eating a slice of pizza at a small table.",
    "A sailboat floating on a lake near green hills.",
    "A living room with a grey sofa and a small coffee table.",
    "A skateboarder jumping over a ramp in a skate park.",
    "A giraffe standing next to a tall tree in a field.",
    "A herd of cows grazing in a green pasture.",
    "A laptop and a cup of coffee on an office desk.",
    "An airplane taking off from an airport runway.",
    "A man surfing a large wave in the ocean.",
    "A bathroom with a white sink and a large mirror.",
    "A fire hydrant on the sidewalk of a quiet street.",
    "Two people playing tennis on a clay court.",
    "A horse pulling a carriage through an old town square.",
    "A birthday cake with lit candles on a table.",
    "A traffic light hanging over a busy intersection.",
    "A teddy bear sitting on a child's bed.",
    "A motorcycle parked in front of a brick building.",
    "An elephant walking along a dirt road.",
    "A baseball player swinging a bat at a pitch.",
    "A vase of fresh flowers on a dining table.",
    "A snowboarder coming down a snowy mountain slope.",
    "A clock tower in the middle of a city square.",
    "A sandwich and a bowl of soup on a tray.",
    "A young girl brushing her teeth in front of a mirror.",
    "A fishing boat tied to a wooden dock at sunset.",
    "A bench in a park covered with autumn leaves.",
    "A zebra drinking water from a small pond.",
    "A pair of scissors and some paper on a desk.",
    "A dog looking out of the window of a moving car.",
    "People waiting on a platform as a train arrives.",
)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def fill(template: str, name: str) -> str:
    return template.format(name, a=with_article(name)) if "{a}" in template else template.format(name)


def interleave(*groups: list[dict]) -> list[dict]:
    """e, r, g, e, r, g, ...: any prefix of the file holds every type."""
    return [row for batch in zip_longest(*groups) for row in batch if row is not None]


def numbered(rows: list[dict], guidance: float | None) -> list[dict]:
    for case, row in enumerate(rows):
        row.update(case_number=case, evaluation_seed=SEED_BASE + case,
                   evaluation_guidance="" if guidance is None else guidance)
    return rows


def row(prompt: str, label: str, kind: str = "") -> dict:
    return {"prompt": prompt, "class": label, "type": kind}


def repeated(prompts: list[str], seeds: int) -> list[str]:
    """Each prompt ``seeds`` times in a row (each copy gets its own seed)."""
    return [p for p in prompts for _ in range(seeds)]


def concept_set(concept: str, prompts_of, synonyms_of, names: list[str], guidance, seeds: int = 2) -> list[dict]:
    erased = [row(p, concept, "erased") for p in repeated(prompts_of(concept), seeds)]
    retained = [row(p, other, "retained") for other in names if other != concept for p in prompts_of(other)]
    synonym = [row(p, concept, "synonym") for p in synonyms_of(concept)]
    return numbered(interleave(erased, retained, synonym), guidance)


def all_set(names: list[str], prompts_of, guidance, extra=()) -> list[dict]:
    """Every concept of a family once, untyped."""
    return numbered([row(p, name) for name in names for p in prompts_of(name)] + list(extra), guidance)


def write_family(out: Path, family: str, names: list[str], prompts_of, synonyms_of, guidance, extra_all=()) -> None:
    for name in names:
        write_prompt_csv(out / family / f"{slug(name)}.csv", concept_set(name, prompts_of, synonyms_of, names, guidance), COLUMNS)
    write_prompt_csv(out / family / "all.csv", all_set(names, prompts_of, guidance, extra_all), COLUMNS)


# ---- the shapes world's sets (mini-sd): phrasings, seen and held out ----

WORLD_COLUMNS = COLUMNS + ["phrasing", "template"]

# Each erased row is one phrasing of its concept. "seen": among the templates an erasure
# method trains on for that kind of concept (MACE's configs/mace/mini-sd*.yaml; UCE,
# RECE and ESD train on the concept's name alone); "held-out": in no method's templates
# (tests/test_prompts.py checks both against every benchmark variant's templates, with
# phrasing_of). Held-out rows are the benchmark's Acc_e; a pair's own name ("red
# circle") is what UCE and ESD train on, so for pairs it is a seen phrasing.
OBJECT_PHRASINGS = {"seen": ("a {c} {s}", "a photo of a {c} {s}", "a drawing of a {c} {s}"),
                    "held-out": ("{c} {s}", "a photo of a {size} {c} {s}", "a {size} {c} {s} on a {bg} background")}
PAIR_PHRASINGS = {"seen": ("{c} {s}", "a {c} {s}", "a photo of a {c} {s}"),
                  "held-out": ("an image of a {c} {s}", "a photo of a {size} {c} {s}",
                               "a {size} {c} {s} on a {bg} background")}
STYLE_PHRASINGS = {"seen": ("a {style} {c} {s}", "an image of a {style} {c} {s}", "a picture of a {style} {c} {s}"),
                   "held-out": ("{style} {c} {s}", "a photo of a {style} {c} {s}", "a drawing of a {style} {c} {s}")}
SIZE_CYCLE = ("small", "large")
BACKGROUND_CYCLE = ("white", "grey", "cream", "black", "gradient")

# Images per group: held-out erased rows at least 73 (Wilson's 95% upper bound at 0 of
# 73 is 4.99%, so "nothing left" reads as <= 5 points); seen rows fewer; retained and
# synonym rows take their phrasings in turn over all six.


def phrased(subjects: list[dict], phrasings: tuple[str, ...], copies: int, kind: str, group: str) -> list[dict]:
    """Every subject in every phrasing, ``copies`` times; consecutive rows change both
    subject and phrasing, so a prefix of the set mixes them.

    A subject is ``{"label": class, "words": {"c": ..., "s": ..., "style": ...}}``.
    """
    rows = []
    for copy in range(copies):
        for k in range(len(subjects) * len(phrasings)):
            p, j = k % len(phrasings), k // len(phrasings)
            subject = subjects[(j + p) % len(subjects)]
            rows.append(phrased_row(subject, phrasings[p], kind, group, copy + k))
    return rows


def cycled(subjects: list[dict], phrasings: tuple[str, ...], per_subject: int, kind: str) -> list[dict]:
    """Each subject ``per_subject`` times, its phrasing taking turns over ``phrasings``."""
    return [phrased_row(subject, phrasings[(i + r * len(subjects)) % len(phrasings)], kind, "", i + r)
            for r in range(per_subject) for i, subject in enumerate(subjects)]


def phrased_row(subject: dict, template: str, kind: str, group: str, turn: int) -> dict:
    """One row; ``turn`` picks the size and background words a phrasing asks for."""
    words = {"size": SIZE_CYCLE[turn % len(SIZE_CYCLE)], "bg": BACKGROUND_CYCLE[turn % len(BACKGROUND_CYCLE)],
             **subject["words"]}
    return {**row(phrase(template, **words), subject["label"], kind), "phrasing": group, "template": template}


def subject(label: str, **words: str) -> dict:
    return {"label": label, "words": words}


def world_set(erased: list[dict], retained: list[dict], synonym: list[dict], phrasings: dict,
              copies: tuple[int, int, int, int]) -> list[dict]:
    """erased (held-out and seen phrasings, alternating), retained and synonym rows,
    interleaved. ``copies``: per held-out and per seen (subject, phrasing), then rows per
    retained and per synonym subject."""
    every = phrasings["seen"] + phrasings["held-out"]
    held = phrased(erased, phrasings["held-out"], copies[0], "erased", "held-out")
    seen = phrased(erased, phrasings["seen"], copies[1], "erased", "seen")
    rows = interleave(interleave(held, seen), cycled(retained, every, copies[2], "retained"),
                      cycled(synonym, every, copies[3], "synonym"))
    return numbered(rows, None)


def shape_subjects(shapes, word_of=lambda shape: [shape]) -> list[dict]:
    """Every shape in every colour, colour by colour (so consecutive subjects differ in shape)."""
    return [subject(shape, c=colour, s=word) for colour in COLOURS for shape in shapes for word in word_of(shape)]


def colour_subjects(colours, word_of=lambda colour: [colour]) -> list[dict]:
    return [subject(colour, c=word, s=shape) for shape in SHAPES for colour in colours for word in word_of(colour)]


# The shape-colour pairs of the style sets: each shape and each colour three times
# (shape i with colours i, i+1, i+3), so that no shape or colour dominates a style.
STYLE_PAIRS = [(shape, COLOURS[(i + k) % len(COLOURS)]) for i, shape in enumerate(SHAPES) for k in (0, 1, 3)]


def style_subjects(style: str, word: str) -> list[dict]:
    return [subject(style, style=word, c=colour, s=shape) for shape, colour in STYLE_PAIRS]


def write_world_sets(out: Path) -> None:
    """shapes/, colours/, styles/: one set per concept erased, plus three shapes at once."""
    def write(path, rows):
        write_prompt_csv(out / path, rows, WORLD_COLUMNS)

    for shape in SHAPES:  # 90 held-out, 36 seen, 60 retained (5 shapes x 6 colours x 2), 36 synonyms (2 words x 6 colours x 3)
        others = [s for s in SHAPES if s != shape]
        write(f"shapes/{slug(shape)}.csv", world_set(shape_subjects([shape]), shape_subjects(others),
                                                     shape_subjects([shape], lambda s: SYNONYMS[s]), OBJECT_PHRASINGS,
                                                     (5, 2, 2, 3)))
    three, rest = ["circle", "square", "triangle"], ["star", "heart", "cross"]
    # 108 held-out and 54 seen (36 per shape in each), 72 retained, 36 synonyms
    write("shapes/circle-square-triangle.csv", world_set(shape_subjects(three), shape_subjects(rest),
                                                         shape_subjects(three, lambda s: SYNONYMS[s]), OBJECT_PHRASINGS,
                                                         (2, 1, 4, 1)))
    for colour in COLOURS:  # 90 held-out, 36 seen, 60 retained, 36 synonyms where the colour has one (violet)
        others = [c for c in COLOURS if c != colour]
        write(f"colours/{slug(colour)}.csv", world_set(colour_subjects([colour]), colour_subjects(others),
                                                       colour_subjects([colour], lambda c: COLOUR_SYNONYMS.get(c, [])),
                                                       OBJECT_PHRASINGS, (5, 2, 2, 6)))
    write_prompt_csv(out / "colours" / "all.csv", all_set(list(COLOURS), colour_prompts, None), COLUMNS)
    for style in STYLES:  # 108 held-out, 54 seen, 54 retained (the other style), 36 synonyms (hollow, solid)
        other = next(s for s in STYLES if s != style)
        write(f"styles/{slug(style)}.csv", world_set(style_subjects(style, STYLE_WORDS[style][0]),
                                                     style_subjects(other, STYLE_WORDS[other][0]),
                                                     style_subjects(style, STYLE_WORDS[style][1]), STYLE_PHRASINGS,
                                                     (2, 1, 3, 2)))
    write_prompt_csv(out / "styles" / "all.csv",
                     all_set(list(STYLES), lambda s: [object_prompt(sh, c, s) for sh, c in STYLE_PAIRS], None), COLUMNS)


# ---- pairs/: a concept is a shape-colour pair ("red circle"), 36 of them ----

# Erasing N pairs at once (mass erasure): the first N pairs of a block of shapes x
# colours, colour by colour, so that pairs sharing neither attribute with an erased pair
# remain ("far"). N = 24 takes the 5 x 5 block but its last pair, leaving one far pair.
MASS_BLOCKS = {6: (2, 3), 12: (3, 4), 24: (5, 5)}  # N: (shapes, colours) of the block
ERASED_IMAGES, KEPT_IMAGES = 73, 60  # at least this many erased rows, neighbour rows, far rows


def mass_pairs(n: int) -> list[tuple[str, str]]:
    """The (colour, shape) pairs erased together in ``pairs/erase-<n>.csv``."""
    shapes, colours = MASS_BLOCKS[n]
    return [(colour, shape) for colour in COLOURS[:colours] for shape in SHAPES[:shapes]][:n]


def pair_groups(erased: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Every pair by its relation to the erased ones: ``erased``; ``neighbour`` (shares a
    shape or a colour with an erased pair); ``far`` (shares neither)."""
    colours, shapes = {c for c, _ in erased}, {s for _, s in erased}
    groups = {"erased": list(erased), "neighbour": [], "far": []}
    for colour in COLOURS:
        for shape in SHAPES:
            if (colour, shape) not in erased:
                groups["neighbour" if colour in colours or shape in shapes else "far"].append((colour, shape))
    return groups


def pair_set(erased: list[tuple[str, str]]) -> list[dict]:
    """The erased pairs (each phrasing in turn; ``phrasing`` seen or held-out), their
    neighbours and the far pairs, interleaved; each group at least its image count."""
    every = PAIR_PHRASINGS["seen"] + PAIR_PHRASINGS["held-out"]
    rows = {}
    for kind, pairs in pair_groups(erased).items():
        subjects = [subject(f"{colour} {shape}", c=colour, s=shape) for colour, shape in pairs]
        images = ERASED_IMAGES if kind == "erased" else KEPT_IMAGES
        rows[kind] = cycled(subjects, every, -(-images // len(subjects)), kind)
    for r in rows["erased"]:
        r["phrasing"] = "seen" if r["template"] in PAIR_PHRASINGS["seen"] else "held-out"
    return numbered(interleave(rows["erased"], rows["neighbour"], rows["far"]), None)


def write_pair_sets(out: Path) -> None:
    """``pairs/<colour>-<shape>.csv`` (one pair erased), ``pairs/erase-<n>.csv`` (n at
    once) and ``pairs/all.csv`` (every pair once, untyped)."""
    for colour in COLOURS:
        for shape in SHAPES:
            write_prompt_csv(out / "pairs" / f"{colour}-{shape}.csv", pair_set([(colour, shape)]), WORLD_COLUMNS)
    for n in MASS_BLOCKS:
        write_prompt_csv(out / "pairs" / f"erase-{n}.csv", pair_set(mass_pairs(n)), WORLD_COLUMNS)
    every = numbered([row(phrase("a {c} {s}", c=c, s=s), f"{c} {s}") for c in COLOURS for s in SHAPES], None)
    write_prompt_csv(out / "pairs" / "all.csv", every, COLUMNS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "eval_prompts"))
    out = Path(parser.parse_args().out)

    def object_prompts(table):
        return lambda name: [fill(t, name) for t in OBJECT_TEMPLATES]

    def object_synonyms(table):
        return lambda name: [fill(t, word) for word in table[name] for t in OBJECT_TEMPLATES]

    assert all(SYNONYMS[s] for s in SHAPES)
    write_world_sets(out)
    write_prompt_csv(out / "shapes" / "all.csv", all_set(list(SHAPES), shape_prompts, None,
                                                          [row(p, "none") for p in empty_prompts()]), COLUMNS)
    write_pair_sets(out)
    write_family(out, "cifar10", list(CIFAR10), object_prompts(CIFAR10), object_synonyms(CIFAR10), SD_GUIDANCE)
    write_family(out, "imagenette", list(IMAGENETTE), object_prompts(IMAGENETTE), object_synonyms(IMAGENETTE), SD_GUIDANCE)

    def artist_prompts(artist):
        return [t.format(subject=s, artist=artist) for s in ARTIST_SUBJECTS for t in ARTIST_TEMPLATES]

    write_family(out, "artists", ARTISTS, artist_prompts, lambda artist: [], SD_GUIDANCE)
    captions = numbered([row(c, "") for c in COCO_STYLE_CAPTIONS], SD_GUIDANCE)
    write_prompt_csv(out / "coco" / "captions.csv", captions, COLUMNS)
    print(f"wrote {sum(1 for _ in out.rglob('*.csv'))} prompt sets under {out}")


if __name__ == "__main__":
    main()
