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

The shapes world has three more families for mini-sd, whose ``class`` is the attribute
erased (the world metric infers which from it): ``shapes/circle-square-triangle``
(three shapes erased at once), ``colours/<c>`` and ``styles/<s>`` (a colour or a
rendering style, over the shapes). In these the classes of each type take turns too.
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
    shape_prompts,
    synonym_prompts,
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


def concepts_set(concepts: list[str], prompts_of, synonyms_of, names: list[str],
                 copies: tuple[int, int, int]) -> list[dict]:
    """The world attribute sets (mini-sd, default guidance): ``concepts`` erased at once;
    within each type the classes take turns, so any prefix holds every class of every
    type. ``copies``: seeds per erased, retained and synonym prompt."""
    def group(labels, prompts, kind, seeds):
        return interleave(*([row(p, label, kind) for p in repeated(prompts(label), seeds)] for label in labels))

    erased = group(concepts, prompts_of, "erased", copies[0])
    retained = group([n for n in names if n not in concepts], prompts_of, "retained", copies[1])
    synonym = group(concepts, synonyms_of, "synonym", copies[2])
    return numbered(interleave(erased, retained, synonym), None)


def all_set(names: list[str], prompts_of, guidance, extra=()) -> list[dict]:
    """Every concept of a family once, untyped."""
    return numbered([row(p, name) for name in names for p in prompts_of(name)] + list(extra), guidance)


def write_family(out: Path, family: str, names: list[str], prompts_of, synonyms_of, guidance, extra_all=()) -> None:
    for name in names:
        write_prompt_csv(out / family / f"{slug(name)}.csv", concept_set(name, prompts_of, synonyms_of, names, guidance), COLUMNS)
    write_prompt_csv(out / family / "all.csv", all_set(names, prompts_of, guidance, extra_all), COLUMNS)


# The shape-colour pairs of the style sets: each shape and each colour three times
# (shape i with colours i, i+1, i+3), so that no shape or colour dominates a style.
STYLE_PAIRS = [(shape, COLOURS[(i + k) % len(COLOURS)]) for i, shape in enumerate(SHAPES) for k in (0, 1, 3)]


def colour_synonym_prompts(colour: str) -> list[str]:
    """``colour_prompts`` with each other name of the colour (``violet``); none for most."""
    return [object_prompt(shape, word) for word in COLOUR_SYNONYMS.get(colour, []) for shape in SHAPES]


def style_word_prompts(style: str, words: list[str]) -> list[str]:
    """``"an outlined red circle"``... over ``STYLE_PAIRS``, once per word."""
    return [object_prompt(shape, colour, word) for word in words for shape, colour in STYLE_PAIRS]


def write_attribute_family(out: Path, family: str, names: list[str], prompts_of, synonyms_of, copies) -> None:
    for name in names:
        rows = concepts_set([name], prompts_of, synonyms_of, names, copies)
        write_prompt_csv(out / family / f"{slug(name)}.csv", rows, COLUMNS)
    write_prompt_csv(out / family / "all.csv", all_set(names, prompts_of, None), COLUMNS)


def write_world_attributes(out: Path) -> None:
    """mini-sd's multi-shape, colour and style sets (the world metric reads the attribute from ``class``)."""
    # 12 rows per class in every type: 6 colours x 2 seeds; synonyms 2 words x 6 colours.
    three = concepts_set(["circle", "square", "triangle"], shape_prompts, synonym_prompts, list(SHAPES), (2, 2, 1))
    write_prompt_csv(out / "shapes" / "circle-square-triangle.csv", three, COLUMNS)
    # As the shape sets: 12 erased (6 shapes x 2 seeds), 30 retained, 12 synonym (violet x 6 shapes x 2 seeds).
    write_attribute_family(out, "colours", list(COLOURS), colour_prompts, colour_synonym_prompts, (2, 1, 2))
    # 18 of each: the STYLE_PAIRS, once per style word.
    write_attribute_family(out, "styles", list(STYLES), lambda s: style_word_prompts(s, STYLE_WORDS[s][:1]),
                           lambda s: style_word_prompts(s, STYLE_WORDS[s][1:]), (1, 1, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "eval_prompts"))
    out = Path(parser.parse_args().out)

    def object_prompts(table):
        return lambda name: [fill(t, name) for t in OBJECT_TEMPLATES]

    def object_synonyms(table):
        return lambda name: [fill(t, word) for word in table[name] for t in OBJECT_TEMPLATES]

    write_family(out, "shapes", list(SHAPES), shape_prompts, synonym_prompts, None,
                 extra_all=[row(p, "none") for p in empty_prompts()])
    assert all(SYNONYMS[s] for s in SHAPES)
    write_world_attributes(out)
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
