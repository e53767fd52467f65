#!/usr/bin/env python
"""Write ``erasure/assets/mini-sd/trained_token_ids.json``: the token ids whose rows of
mini-sd's token table were trained.

mini-clip's text tower trained only the rows of the tokens its world's captions and
evaluation prompts use (``scripts/train_mini_clip.py``, ``WorldVocabulary``); every other
row of the 49,408 is its random initialisation. The discrete attacks search this set on
mini-sd (``vocabulary: trained`` in ``configs/attacks/*/mini-sd.yaml``): a search over
untrained rows is a search over noise. The set is every token of every word the caption
grammar (``erasure.world.captions``) and the class prompts can produce, plus the comma
of three-object captions and the start and end tokens: 68 ids, the count mini-clip's
``metrics.json`` records (``trained_token_rows``).

    python scripts/mini_sd_vocabulary.py          # rewrites the file
    python scripts/mini_sd_vocabulary.py --check  # exit 1 if the file differs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "erasure" / "assets" / "mini-sd" / "trained_token_ids.json"


def world_texts() -> list[str]:
    """Every word and phrase the world's captions and prompts are made of."""
    sys.path.insert(0, str(REPO / "scripts"))
    from train_mini_clip import colour_class_prompts, shape_class_prompts

    from erasure.world import captions as c
    from erasure.world.scenes import BACKGROUNDS, COLOURS, SHAPES, SIZES, STYLES

    texts = [", ", "a", "an", *SHAPES, *COLOURS, *STYLES, *SIZES, *BACKGROUNDS, *c.JOINERS]
    texts += [template for template, _ in c.SINGLE_TEMPLATES] + list(c.EMPTY_TEMPLATES)
    for words in (c.SYNONYMS, c.COLOUR_SYNONYMS, c.STYLE_WORDS, c.SIZE_WORDS, c.BACKGROUND_WORDS):
        texts += [word for values in words.values() for word in values]
    for shape in SHAPES:
        texts += c.shape_prompts(shape) + c.synonym_prompts(shape) + c.pair_prompts(shape)
    for colour in COLOURS:
        texts += c.colour_prompts(colour)
    texts += c.style_prompts("filled") + c.style_prompts("outlined") + c.empty_prompts()
    texts += [p for group in shape_class_prompts() + colour_class_prompts() for p in group]
    return [text.replace("{np}", " ").replace("{bg}", " ") for text in texts]


def trained_ids() -> list[int]:
    from erasure.tokenizer import clip_tokenizer

    tokenizer = clip_tokenizer()
    return sorted({i for text in world_texts() for i in tokenizer(text).input_ids})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    args = parser.parse_args()
    data = {"ids": trained_ids(),
            "source": "scripts/mini_sd_vocabulary.py: the tokens of the shapes world's caption grammar and prompts, "
                      "the rows mini-clip's text tower trained"}
    text = json.dumps(data) + "\n"
    if args.check:
        sys.exit(0 if OUTPUT.read_text() == text else 1)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}: {len(data['ids'])} ids")


if __name__ == "__main__":
    main()
