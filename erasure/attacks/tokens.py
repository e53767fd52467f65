"""Token ids and token vectors: the machinery the attacks (and AdvUnlearn) share.

- Candidate vocabularies. A discrete attack's tokens must come back as the same ids
  when its prompt is written out as text and tokenised again, or the replayed prompt is
  not the one that was found. CLIP's BPE has 49,406 ordinary ids; only those that end a
  word (``</w>``) and re-encode to themselves alone are candidates (34,301 of them):
  word pieces without ``</w>`` glue onto the next word, byte fragments decode to
  U+FFFD, and the special ids (start, end, the pad ``"!"`` of SD 2.x) are never
  candidates. ``vocabulary`` narrows them further: ``"all"``, ``"trained"`` (the ids a
  model's ``trained_token_ids.json`` lists: the bundled mini-sd's text encoder learned
  only its world's 66 words, the other rows are untrained noise), or a list of words.
- Token layouts. ``compose_ids`` lays out ``[start, parts..., end, pad...]`` per text
  encoder, where a part is text (tokenised as the pipeline would) or given ids (slots),
  and returns where the given ids sit. Adversarial prompts are the slot words joined by
  spaces, then the text: tokenising that text gives the same ids (tested).
- Token vectors. ``injected_tokens`` replaces the token-table output at chosen positions
  by chosen vectors, with gradients, through a forward hook on each encoder's
  ``get_input_embeddings()``. Neither the table nor the tokenizer is modified, which
  also works where ``CLIPTextModel`` no longer accepts ``inputs_embeds`` (transformers 5).
  ``encode_with_vectors`` encodes prompts whose ``SLOT`` marks stand for given vectors:
  a prefix, a replaced concept word, an inverted token.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import torch

from ..errors import ErasureError

TRAINED_IDS_FILE = "trained_token_ids.json"  # {"ids": [...], "source": "..."} next to a model's model_index.json
_SAFE_IDS: dict[str, torch.Tensor] = {}


def safe_token_ids(tokenizer) -> torch.Tensor:
    """The ids that end a word and tokenise back to themselves alone, sorted (cached per
    vocabulary and special tokens: SD 2.x's pad ``"!"`` splits every run of ``!``).

    Args:
        tokenizer: a CLIP tokenizer.
    """
    vocab = tokenizer.get_vocab()
    key = hashlib.sha256(json.dumps([sorted(vocab.items()), sorted(tokenizer.all_special_tokens)]).encode()).hexdigest()
    if key not in _SAFE_IDS:
        special = set(tokenizer.all_special_ids)
        ids = sorted(i for token, i in vocab.items() if token.endswith("</w>") and i not in special)
        # Some tokenizer states decode a word with its end-of-word marker left on ("a</w>";
        # seen inside scripts/gpu_bench.py's process): the marker is a space, not text.
        texts = [tokenizer.decode([i], clean_up_tokenization_spaces=False).replace("</w>", " ").strip() for i in ids]
        encoded = tokenizer(texts, add_special_tokens=False).input_ids
        _SAFE_IDS[key] = torch.tensor([i for i, again in zip(ids, encoded) if again == [i]])
    return _SAFE_IDS[key]


def candidate_ids(adapter, vocabulary: str | list[str], model_folder: Path | None) -> tuple[torch.Tensor, str]:
    """The ids a discrete attack may use, and a description of them for the record.

    Args:
        adapter: the model's adapter (its tokenizers).
        vocabulary: ``"all"``, ``"trained"`` or a list of words.
        model_folder: where ``trained_token_ids.json`` is looked for (``"trained"``).
    """
    tokenizers = adapter.tokenizers()
    safe = safe_token_ids(tokenizers[0])
    for other in tokenizers[1:]:
        safe = safe[torch.isin(safe, safe_token_ids(other))]
    if vocabulary == "all":
        return safe, f"all round-trip-safe ids ({len(safe)})"
    if vocabulary == "trained":
        listed = _trained_ids(model_folder)
        chosen = safe[torch.isin(safe, listed)]
        return chosen, f"the model's trained ids ({len(chosen)} of {len(listed)} listed are round-trip safe)"
    if isinstance(vocabulary, str):
        raise ErasureError(f"vocabulary {vocabulary!r} is unknown: use all, trained, or a list of words")
    ids = []
    for word in vocabulary:
        found = tokenizers[0](word, add_special_tokens=False).input_ids
        if len(found) != 1 or not bool(torch.isin(torch.tensor(found), safe).all()):
            raise ErasureError(f"vocabulary word {word!r} is not one round-trip-safe token: use single words such as 'red'")
        ids.append(found[0])
    chosen = torch.tensor(sorted(set(ids)))
    return chosen, f"{len(chosen)} given words"


def _trained_ids(model_folder: Path | None) -> torch.Tensor:
    path = None if model_folder is None else Path(model_folder) / TRAINED_IDS_FILE
    if path is None or not path.is_file():
        raise ErasureError(f"vocabulary 'trained' needs the model folder's {TRAINED_IDS_FILE} (the bundled mini-sd has "
                           "one): use vocabulary all, or a list of words")
    try:
        return torch.tensor(json.loads(path.read_text())["ids"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ErasureError(f"{path} is not a list of token ids ({error}): repair or remove it") from None


def words_of(adapter, ids) -> list[str]:
    """Each id as the text word it stands for (ids from ``candidate_ids``).

    Args:
        adapter: the model's adapter.
        ids: token ids.
    """
    tokenizer = adapter.tokenizers()[0]
    return [tokenizer.decode([int(i)], clean_up_tokenization_spaces=False).strip() for i in ids]


def adversarial_prompt(words: list[str], prompt: str) -> str:
    """The text of a prompt with ``words`` before it."""
    return " ".join([*words, prompt]).strip()


def compose_ids(adapter, rows: list[list[str | torch.Tensor]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Token ids ``[start, parts..., end, pad...]`` per text encoder, and where the given ids sit.

    Text parts are tokenised as the pipeline tokenises (no start or end token); tensor
    parts are ids placed as they are (slots). Text that does not fit is cut at the end,
    the end token is kept.

    Args:
        adapter: the model's adapter.
        rows: per row, its parts in order.

    Returns:
        ``(ids, slots)``: ``(batch, length)`` ids per text encoder, and a ``(batch, length)``
        boolean mask of the slot positions (the same for every encoder).
    """
    results, slots = [], None
    for tokenizer in adapter.tokenizers():
        length = tokenizer.model_max_length
        batch_ids, batch_slots = [], []
        for parts in rows:
            ids, is_slot = [tokenizer.bos_token_id], [False]
            for part in parts:
                piece = [int(i) for i in part] if isinstance(part, torch.Tensor) else \
                    tokenizer(part, add_special_tokens=False).input_ids
                ids += piece
                is_slot += [isinstance(part, torch.Tensor)] * len(piece)
            if sum(is_slot[: length - 1]) != sum(is_slot):
                raise ErasureError(f"{sum(is_slot)} attack tokens do not fit in {length} tokens: use fewer")
            ids, is_slot = ids[: length - 1] + [tokenizer.eos_token_id], is_slot[: length - 1] + [False]
            padding = length - len(ids)
            batch_ids.append(ids + [tokenizer.pad_token_id] * padding)
            batch_slots.append(is_slot + [False] * padding)
        results.append(torch.tensor(batch_ids, device=adapter.device))
        slots = torch.tensor(batch_slots, device=adapter.device) if slots is None else slots
    return results, slots


@contextmanager
def injected_tokens(adapter, slots: torch.Tensor, vectors: list[torch.Tensor]) -> Iterator[None]:
    """Within the block, each text encoder's token table gives ``vectors`` at ``slots``.

    Every other position is the table's own output; gradients flow to ``vectors``. The
    block must encode ids of ``slots``' shape only (``adapter.encode_ids``), since every
    call of the token tables is changed.

    Args:
        adapter: the model's adapter.
        slots: ``(batch, length)`` booleans (``compose_ids``).
        vectors: per text encoder, ``(slots.sum(), width)`` vectors in row-major slot order.
    """
    where = tuple(slots.nonzero().T)
    tables = adapter.token_embeddings()
    if len(vectors) != len(tables):
        raise ValueError(f"{len(vectors)} vector sets for {len(tables)} text encoders")

    def replacing(values: torch.Tensor):
        def hook(module, inputs, output):
            if output.shape[:2] != slots.shape:
                raise RuntimeError(f"token vectors were injected for ids of shape {tuple(slots.shape)}, "
                                   f"but the encoder got {tuple(output.shape[:2])}")
            return output.index_put(where, values.to(output.dtype))

        return hook

    with ExitStack() as stack:
        for table, values in zip(tables, vectors):
            stack.callback(table.register_forward_hook(replacing(values)).remove)
        yield


SLOT = "\x00"  # marks where token vectors go in a prompt's text while its ids are composed


def encode_with_vectors(adapter, prompts: list[str], vectors: list[torch.Tensor], ids: torch.Tensor | None = None):
    """Encode prompts in which each ``SLOT`` stands for the row's ``k`` vectors, gradients
    flowing to the vectors: a prefix (``encode_with_prefix``), a concept word replaced
    (AdvUnlearn's ``replace`` attack) or concept inversion's token (``k`` = 1).

    Args:
        adapter: the model's adapter.
        prompts: one per row, naming ``SLOT`` once or more (each time the same vectors).
        vectors: per text encoder, ``(rows, k, width)``.
        ids: ``(rows, k)`` token ids the vectors stand for (what the prompt's text will
            say); ``None``: any ordinary id (the vectors are all that is read).
    """
    rows, k = vectors[0].shape[:2]
    if ids is None:
        ids = torch.full((rows, k), adapter.concept_token_ids("a")[0])
    parts, owners = [], []
    for row, prompt in enumerate(prompts):
        pieces = prompt.split(SLOT)
        row_parts = [pieces[0]] if pieces[0].strip() else []
        for piece in pieces[1:]:
            row_parts.append(ids[row].cpu())
            owners.append(row)
            if piece.strip():
                row_parts.append(piece)
        parts.append(row_parts)
    composed, slots = compose_ids(adapter, parts)
    owners = torch.tensor(owners, dtype=torch.long)
    with injected_tokens(adapter, slots, [v[owners.to(v.device)].reshape(-1, v.shape[-1]) for v in vectors]):
        return adapter.encode_ids(composed)


def encode_with_prefix(adapter, prompts: list[str], vectors: list[torch.Tensor], ids: torch.Tensor | None = None):
    """Encode ``[start, k prefix vectors, prompt, end]`` per prompt (``encode_with_vectors``):
    UnlearnDiffAtk's prefix (vectors of drawn tokens) and AdvUnlearn's ``prefix`` attack
    (free vectors) alike.

    Args:
        adapter: the model's adapter.
        prompts: one per row.
        vectors: per text encoder, ``(rows, k, width)``.
        ids: ``(rows, k)`` token ids the vectors stand for; ``None``: any ordinary id.
    """
    return encode_with_vectors(adapter, [SLOT + prompt for prompt in prompts], vectors, ids)
