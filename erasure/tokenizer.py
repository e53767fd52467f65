"""The real CLIP BPE tokenizer, built offline from the vocabulary open-clip-torch ships.

Stable Diffusion 1.x/2.x use OpenAI CLIP's tokenizer. The Hub is not always reachable
(tests, CI, air-gapped clusters), but ``open_clip`` carries the same BPE merges, from
which the 49,408-entry vocabulary is reconstructed exactly as OpenAI's ``SimpleTokenizer``
does: 256 byte characters, the same with ``</w>``, one entry per merge, then the two
special tokens.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

from .concepts import shown

logger = logging.getLogger(__name__)

# Lines 1..48,894 of the file (after the version header) are the merges CLIP uses.
_NUM_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (as CLIP uses)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def _bpe_file() -> Path:
    import open_clip

    return Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    lines = gzip.open(_bpe_file(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + _NUM_MERGES]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(pair) for pair in merges] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def clip_tokenizer(pad_token: str = EOS, model_max_length: int = 77) -> CLIPTokenizer:
    """OpenAI CLIP's tokenizer, with no network access.

    Args:
        pad_token: ``<|endoftext|>`` as in SD 1.x; SD 2.x pads with ``"!"``.
        model_max_length: 77 for every Stable Diffusion; it must be set explicitly.
    """
    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=pad_token,
        model_max_length=model_max_length,
    )


def warn_if_truncated(tokenizer, texts: Iterable[str], what: str = "prompt") -> list[str]:
    """Log one warning line for each text longer than the text encoder reads (77 tokens
    for every Stable Diffusion): the rest is cut off without a word otherwise.

    Call it where prompts are encoded (the adapter's ``encode``), or on the concepts
    before a run.

    Args:
        tokenizer: the pipeline's tokenizer (its ``model_max_length`` is the limit).
        texts: the prompts or concepts about to be encoded.
        what: what they are, for the message.

    Returns:
        The texts that will be cut.
    """
    limit = tokenizer.model_max_length
    cut = []
    for text in dict.fromkeys(texts):  # each distinct text once
        # tokenize() adds no start/end tokens and, unlike __call__, does not warn itself.
        count = len(tokenizer.tokenize(text)) + 2
        if count > limit:
            logger.warning(
                "%s %s is %d tokens long; the text encoder reads only the first %d (the rest is ignored): shorten it",
                what, shown(text), count, limit,
            )
            cut.append(text)
    return cut
