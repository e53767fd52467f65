"""Prompt sets: CSV files in the column conventions the field already uses.

One row is one image. The columns read are those of the published sets, as they are:

- ``prompt`` (required): the text to generate from;
- ``evaluation_seed``: the row's seed (I2P's Hub copy calls it ``sd_seed``);
- ``evaluation_guidance``: the row's classifier-free guidance (``sd_guidance_scale``);
- ``case_number``: the row's id in the published set;
- ``class``: the expected label, for classifier metrics (vangogh-style sets name it
  ``artist``);
- ``type``: the row's role in an erasure evaluation: ``erased`` (prompts of the
  erased concept), ``retained`` (other concepts, which must survive), ``synonym``
  (other words for the erased concept); other values are kept as plain groups.

Every other column (I2P's ``categories``, ``nudity_percentage``..., MACE's ``coco_id``,
an unnamed pandas index) is kept in ``PromptRow.extra`` and otherwise ignored.

A prompt set is named by a path, by the name of a set shipped in ``eval_prompts/``
(``shapes/circle``, ``cifar10/airplane``), by ``i2p`` (fetched from the Hugging Face Hub
once, then cached), or by ``hf://datasets/OWNER/REPO/FILE.csv`` for any CSV on the Hub.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ErasureError

# Names the published sets use for the same column, first the one we write.
COLUMN_ALIASES = {
    "evaluation_seed": ("evaluation_seed", "sd_seed", "seed"),
    "evaluation_guidance": ("evaluation_guidance", "sd_guidance_scale", "guidance_scale", "guidance"),
    "class": ("class", "artist", "label"),
}
TYPES = ("erased", "retained", "synonym")
UNTYPED = "all"  # the group of rows without a type

# Sets too large to ship, fetched from the Hub on first use: name -> (repo, file).
REMOTE_SETS = {
    "i2p": ("AIML-TUDA/i2p", "i2p_benchmark.csv"),
}
HF_PREFIX = "hf://datasets/"

# An installed wheel carries the sets inside the package; a source checkout keeps them at the top.
_BUNDLED_DIRS = (Path(__file__).resolve().parents[1] / "eval_prompts", Path(__file__).resolve().parents[2] / "eval_prompts")


@dataclass(frozen=True)
class PromptRow:
    """One row of a prompt set: one image to generate and score.

    Attributes:
        index: position in the set (after ``limit``); names the image file.
        prompt: the text.
        seed: the generator seed; the row's own, or ``index`` when the set has none.
        guidance: the row's guidance scale, or ``None`` for the model's default.
        case_number: the published id (``str(index)`` when the set has none).
        label: the ``class`` column ("" when absent).
        type: the ``type`` column ("" when absent).
        extra: every other column, as read.
    """

    index: int
    prompt: str
    seed: int
    guidance: float | None = None
    case_number: str = ""
    label: str = ""
    type: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def group(self) -> str:
        """The row's type, or ``"all"`` when it has none."""
        return self.type or UNTYPED


@dataclass(frozen=True)
class PromptSet:
    """The rows of one prompt set and where they came from."""

    name: str
    source: str
    rows: list[PromptRow]
    sha256: str = ""

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def class_names(self) -> list[str]:
        """The distinct ``class`` values, in order of first appearance."""
        return list(dict.fromkeys(row.label for row in self.rows if row.label))

    def counts(self) -> dict[str, int]:
        """Rows per group (``erased``, ``retained``, ``synonym``, or ``all``)."""
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.group] = counts.get(row.group, 0) + 1
        return counts

    def limited(self, limit: int | None) -> "PromptSet":
        """The first ``limit`` rows (all rows for ``None``)."""
        if limit is None:
            return self
        if limit < 1:
            raise ErasureError(f"--limit {limit}: give a positive number of rows")
        return PromptSet(self.name, self.source, self.rows[:limit], self.sha256)


def load_prompt_set(spec: str | os.PathLike | PromptSet, limit: int | None = None) -> PromptSet:
    """Read a prompt set named by a path, a bundled set name, ``i2p`` or an ``hf://`` path.

    Args:
        spec: ``"path/to/set.csv"``, ``"shapes/circle"``, ``"i2p"``,
            ``"hf://datasets/OWNER/REPO/FILE.csv"``, or a ``PromptSet``.
        limit: keep only the first ``limit`` rows.
    """
    if isinstance(spec, PromptSet):
        return spec.limited(limit)
    path = resolve_prompt_path(spec)
    name = None if Path(str(spec)).expanduser().is_file() else str(spec)  # "shapes/circle", "i2p"
    return read_prompt_csv(path, name=name).limited(limit)


def resolve_prompt_path(spec: str | os.PathLike) -> Path:
    """The local CSV file a prompt-set name stands for (fetching Hub sets on first use)."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if text in REMOTE_SETS:
        return fetch_from_hub(*REMOTE_SETS[text], name=text)
    if text.startswith(HF_PREFIX):
        owner, _, rest = text[len(HF_PREFIX):].partition("/")
        repo, _, filename = rest.partition("/")
        if not (owner and repo and filename):
            raise ErasureError(f"{text}: write hf://datasets/OWNER/REPO/FILE.csv")
        return fetch_from_hub(f"{owner}/{repo}", filename, name=text)
    bundled = bundled_prompt_path(text)
    if bundled is not None:
        return bundled
    if path.suffix == ".csv" or text.startswith((".", "/", "~")):
        raise ErasureError(f"prompt file {text} not found: check the path")
    raise ErasureError(
        f"unknown prompt set {text!r}: pass a CSV file, a bundled set (erase-eval --list-prompts lists them), "
        f"{', '.join(REMOTE_SETS)}, or hf://datasets/OWNER/REPO/FILE.csv"
    )


def bundled_prompts_dir() -> Path | None:
    for directory in _BUNDLED_DIRS:
        if directory.is_dir():
            return directory
    return None


def bundled_prompt_path(name: str) -> Path | None:
    """``eval_prompts/<name>.csv`` if it exists (``name`` like ``"shapes/circle"``)."""
    root = bundled_prompts_dir()
    if root is None or ".." in Path(name).parts:
        return None
    path = root / (name if name.endswith(".csv") else f"{name}.csv")
    return path if path.is_file() else None


def list_bundled_sets() -> list[str]:
    """Names of the shipped prompt sets, e.g. ``["artists/claude-monet", ..., "shapes/circle"]``."""
    root = bundled_prompts_dir()
    if root is None:
        return []
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.csv"))


def fetch_from_hub(repo_id: str, filename: str, name: str) -> Path:
    """Download a dataset file from the Hugging Face Hub once (then read it from the cache)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset"))
    except Exception as error:  # offline, missing, gated: huggingface_hub raises many types
        reason = str(error).strip().splitlines()[0][:140] if str(error).strip() else type(error).__name__
        raise ErasureError(
            f"prompt set {name!r} is fetched from the Hugging Face Hub (datasets/{repo_id}/{filename}) and could not be "
            f"fetched ({reason}): go online once, or download the file and pass --prompts PATH"
        ) from None


# ---- reading ----


def read_prompt_csv(path: str | os.PathLike, name: str | None = None) -> PromptSet:
    """Read a prompt CSV as published (BOM, quoted multi-line prompts, extra columns).

    Args:
        path: the CSV file.
        name: a short name for reports; default: the file's stem.
    """
    path = Path(path)
    if not path.is_file():
        raise ErasureError(f"prompt file {path} not found: check the path")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ErasureError(f"{path} is not UTF-8 text: save it as a UTF-8 CSV") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "prompt" not in header:
        shown = ", ".join(h for h in header if h) or "none"
        raise ErasureError(f"{path} has no 'prompt' column (columns: {shown[:200]}): name the prompt column 'prompt'")
    columns = {canonical: _first_present(header, aliases) for canonical, aliases in COLUMN_ALIASES.items()}
    rows = []
    for index, record in enumerate(reader):
        record = {(k or "").strip(): (v if v is not None else "") for k, v in record.items()}
        rows.append(_row(index, record, columns, path, line=reader.line_num))
    if not rows:
        raise ErasureError(f"{path} has a header but no rows: add at least one prompt")
    return PromptSet(name or path.stem, str(path), rows, hashlib.sha256(raw).hexdigest())


def _first_present(header: list[str], aliases: tuple[str, ...]) -> str | None:
    return next((alias for alias in aliases if alias in header), None)


def _row(index: int, record: dict, columns: dict, path: Path, line: int) -> PromptRow:
    used = {"prompt", "case_number", "type", *(c for c in columns.values() if c)}
    def cell(canonical: str) -> str:  # an absent column reads as empty, never as the unnamed index column ""
        return record.get(columns[canonical], "").strip() if columns[canonical] else ""

    seed_text = cell("evaluation_seed")
    guidance_text = cell("evaluation_guidance")
    return PromptRow(
        index=index,
        prompt=record["prompt"].strip(),
        seed=_parse_seed(seed_text, index, path, line),
        guidance=_parse_guidance(guidance_text, path, line),
        case_number=record.get("case_number", "").strip() or str(index),
        label=cell("class"),
        type=record.get("type", "").strip().lower(),
        extra={k: v for k, v in record.items() if k and k not in used and not k.startswith("Unnamed:")},
    )


def _parse_seed(text: str, index: int, path: Path, line: int) -> int:
    """The row's seed; rows without one get their index, so the set stays reproducible.
    Written as ``42``, ``42.0`` or ``4.2e1`` (pandas writes floats); anything else, a
    fraction, or a value outside a generator's range is refused."""
    if not text:
        return index
    try:
        seed = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value.is_integer()):
            raise ErasureError(f"{path} line {line}: evaluation_seed {text!r} is not an integer: write a whole number "
                               "in 0 .. 2**64-1") from None
        seed = int(value)
    if not 0 <= seed < 2**64:
        raise ErasureError(f"{path} line {line}: evaluation_seed {text!r} is outside 0 .. 2**64-1: write a seed in that range")
    return seed


def _parse_guidance(text: str, path: Path, line: int) -> float | None:
    """The row's guidance (0: none), or ``None`` when the cell is empty."""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ErasureError(f"{path} line {line}: evaluation_guidance {text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise ErasureError(f"{path} line {line}: evaluation_guidance {text!r} is not a finite number >= 0: write e.g. "
                           "7.5, 0 for none, or leave the cell empty for the default")
    return value


def write_prompt_csv(path: str | os.PathLike, rows: list[dict], columns: list[str]) -> None:
    """Write rows (dicts) as a CSV with the given columns, atomically."""
    from ..atomic import atomic_write

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(buffer.getvalue(), encoding="utf-8"))
