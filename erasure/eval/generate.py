"""Generate one image per prompt row: seeded, batched, resumable, split across processes.

Why it is built this way:

- Each row's initial noise comes from its own CPU ``torch.Generator`` seeded with the
  row's ``evaluation_seed``, so an image does not depend on which rows share its batch,
  on the device, or on the number of processes; and the base and the erased model
  start from the same noise, so their images form comparable pairs.
- Rows are batched in a fixed plan (sorted by guidance scale, which must be uniform in
  one pipeline call, then cut into ``batch_size`` chunks), so a resumed run computes
  every remaining batch exactly as an uninterrupted run would have.
- Every PNG carries, in a text chunk, the prompt, seed, guidance and the generation
  settings and model it was made with (attacked images: the attack's settings too). A
  rerun skips images whose record matches and refuses (unless ``overwrite``) to mix in
  images made otherwise; unreadable files (a crash mid-write) are generated again.
  Files are written atomically, on a worker thread while the next batch generates, so
  the pipeline is never kept waiting for PNG compression (``erase-eval`` generates at
  the speed of a bare pipeline call; ``scripts/bench_generation.py`` measures it).
- The pipeline is called once per batch, with every row's prompt: diffusers encodes the
  prompts once and batches classifier-free guidance (conditional and unconditional in
  one UNet call) whenever guidance is above 1.
- Under ``accelerate launch`` each process takes a contiguous share of the rows
  (``PartialState.split_between_processes``) and writes its own files; the images are
  named by row index, so the shares merge without duplicates, and ``collect_images``
  checks afterwards that none is missing.
- An attack (``erasure.eval.attack``) either replaces a row's prompt by another prompt
  (the row is generated as any row), or gives a ``conditioning`` (embeddings, inverted
  tokens) that goes in through the adapter's ``pipeline_inputs`` with the negative the
  pipeline itself would use, so the rest is as for the prompt. Its settings are part of
  the attacked images' records.
- The batching and seeding themselves are ``erasure.generation.run_pipeline``'s, shared
  with the attacks' in-loop checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..atomic import atomic_write
from ..errors import ErasureError
from ..generation import Conditioning, GenerationSettings, generate_in_memory, plan_batches, row_guidance, run_pipeline
from ..weights import EditedWeights
from .prompts import PromptRow

__all__ = ["collect_images", "generate_images", "generate_in_memory", "image_path", "image_record",
           "plan_batches", "read_record", "row_guidance", "run_pipeline", "share_images", "weights_record"]
logger = logging.getLogger(__name__)

PNG_KEY = "erasure"  # the PNG text chunk holding an image's record


# ---- identity of what made an image ----


def weights_record(weights: EditedWeights, path: "str | os.PathLike | None" = None) -> dict:
    """What identifies erased weights: a hash of the tensors (not of the file, whose
    metadata holds a creation time: the same erasure saved twice is the same model),
    with the method, concepts and config that made them."""
    digest = hashlib.sha256()
    for name in sorted(weights.tensors):
        digest.update(name.encode())
        digest.update(weights.tensors[name].float().contiguous().numpy().tobytes())
    return {"path": None if path is None else str(path), "sha256": digest.hexdigest(), "method": weights.method,
            "concepts": list(weights.concepts), "config": weights.config, "base_model": weights.base_model}


def image_record(row: PromptRow, settings: GenerationSettings, model: str, weights_sha256: str | None,
                 attack: dict | None = None) -> dict:
    """The record stored in an image; two images with equal records are interchangeable.
    Attacked images also record the attack's settings (others have no ``attack`` key)."""
    record = {
        "prompt": row.prompt,
        "seed": row.seed,
        "guidance_scale": row_guidance(row, settings),
        **settings.record(),
        "model": model,
        "weights_sha256": weights_sha256,
    }
    if attack is not None:
        record["attack"] = attack
    return record


def image_path(folder: Path, row: PromptRow) -> Path:
    return folder / f"{row.index:05d}.png"


def share_images(source: Path, target: Path) -> None:
    """Hard-link the images of ``source`` that ``target`` lacks into it (copies where the
    file system has no hard links), so that another report folder reuses them: a rerun
    skips images whose record matches."""
    target.mkdir(parents=True, exist_ok=True)
    for image in source.glob("*.png"):
        destination = target / image.name
        if destination.exists():
            continue
        try:
            os.link(image, destination)
        except OSError:
            shutil.copy2(image, destination)


def read_record(path: Path) -> dict | None:
    """The record in an existing image; ``None`` if the file is missing or unreadable."""
    from PIL import Image

    if not path.is_file():
        return None
    try:
        with Image.open(path) as image:
            image.load()  # decodes every byte: a truncated file fails here
            return json.loads(image.text.get(PNG_KEY, "null"))
    except Exception:  # PIL raises many types for damaged files; all mean "generate again"
        return None


def _save_png(path: Path, image, record: dict, row: PromptRow) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PNG_KEY, json.dumps(record, sort_keys=True))
    # The row's own columns, for anyone browsing the images without the report.
    info.add_text("row", json.dumps({"index": row.index, "case_number": row.case_number, "class": row.label, "type": row.type}))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


# ---- generation ----


def needs_image(path: Path, expected: dict, overwrite: bool) -> bool:
    """True if the image must be (re)made; raises if a different run's image is in the way."""
    if overwrite:
        return True
    found = read_record(path)
    if found is None:
        if path.exists():
            logger.warning("%s is unreadable (interrupted write?); generating it again", path)
        return True
    if found != expected:
        changed = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
        raise ErasureError(
            f"{path} was generated with other settings ({', '.join(changed)} differ): pass --overwrite to "
            "regenerate, or choose another --output folder"
        )
    return False


@torch.no_grad()
def generate_images(
    pipe,
    rows: list[PromptRow],
    folder: str | os.PathLike,
    settings: GenerationSettings,
    model: str,
    weights_sha256: str | None = None,
    overwrite: bool = False,
    state=None,
    description: str = "generating",
    attack: dict | None = None,
    conditioning: Conditioning | None = None,
) -> int:
    """Generate the missing images of ``rows`` into ``folder``; return how many were made.

    Args:
        pipe: a diffusers text-to-image pipeline (its weights as they should be).
        rows: the prompt rows; under several processes each takes its share.
        folder: where ``00000.png``... go.
        settings: from ``erasure.generation.generation_settings``.
        model: the base model's name, stored in each image's record.
        weights_sha256: the erased weights' hash (``None`` for the base model).
        overwrite: regenerate existing images instead of skipping them.
        state: an ``accelerate.PartialState``; ``None`` means one process.
        description: the progress bar's label.
        attack: the settings of the attack that made the rows (stored in the records).
        conditioning: generate from what it gives instead of the rows' prompts (``pipe``
            holding the attacked weights); ``None``: from the prompts.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _process_share(rows, state) as mine:
        expected = {row.index: image_record(row, settings, model, weights_sha256, attack) for row in mine}
        missing = {row.index for row in mine if needs_image(image_path(folder, row), expected[row.index], overwrite)}
        batches = [b for b in plan_batches(mine, settings) if any(row.index in missing for row in b)]
        show = state is None or state.is_local_main_process
        with tqdm(total=len(missing), desc=description, unit="img", disable=not show) as bar, \
                _png_writer() as save:
            for batch in batches:
                images = run_pipeline(pipe, batch, settings, conditioning)
                made = [(image_path(folder, row), image, expected[row.index], row)
                        for row, image in zip(batch, images) if row.index in missing]
                save(made)
                bar.update(len(made))
    return len(missing)


@contextmanager
def _png_writer():
    """``save(jobs)`` writes a batch's images (``_save_png`` arguments) on one worker
    thread while the next batch generates: PIL releases the GIL while it compresses, and
    a 512-pixel PNG takes about 56 ms to write. At most one batch waits (memory stays
    bounded); a failed write surfaces at the next batch; an interrupted run still
    finishes writing the images it made before the interruption propagates."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="erasure-png")
    pending = []

    def save_all(jobs: list[tuple]) -> None:
        for job in jobs:
            _save_png(*job)

    def save(jobs: list[tuple]) -> None:
        while pending:
            pending.pop().result()
        pending.append(pool.submit(save_all, jobs))

    try:
        yield save
        while pending:
            pending.pop().result()
    finally:
        pool.shutdown(wait=True)


@contextmanager
def _process_share(rows: list[PromptRow], state):
    if state is None or state.num_processes == 1:
        yield list(rows)
    else:
        with state.split_between_processes(list(rows)) as share:
            yield list(share)


def collect_images(rows: list[PromptRow], folder: str | os.PathLike, settings: GenerationSettings, model: str,
                   weights_sha256: str | None = None, attack: dict | None = None) -> list:
    """The image of every row (RGB PIL images, read once), each checked to match its
    record, after all processes have finished: a lost or foreign image is an error, not
    a silent gap.

    Args:
        rows: the rows whose images to read.
        folder: the variant's folder.
        settings, model, weights_sha256, attack: what the images must have been made with.
    """
    from PIL import Image

    folder = Path(folder)
    images = []
    for row in rows:
        path = image_path(folder, row)
        try:
            with Image.open(path) as image:
                image.load()
                record = json.loads(image.text.get(PNG_KEY, "null"))
                images.append(image.convert("RGB"))
        except Exception:  # missing or damaged: PIL raises many types
            record = None
        if record != image_record(row, settings, model, weights_sha256, attack):
            raise ErasureError(f"{path} is missing or does not match row {row.index} after generation: rerun to complete it")
    return images
