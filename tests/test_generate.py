"""Seeded, batched, resumable generation (``erasure.eval.generate``): images that do not
depend on their batch or process, resumption that equals an uninterrupted run, PNG
writes off the generating thread that still fail loudly, and weights swapped in and out."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from erasure.errors import ErasureError
from erasure.eval import generate as gen
from erasure.eval.prompts import load_prompt_set
from erasure.generation import generation_settings

from eval_fixtures import STEPS, erased_file  # noqa: F401  (a fixture)



# ---- generation ----


@pytest.fixture
def rows():
    return load_prompt_set("shapes/circle", limit=5).rows


def _settings(pipe, **kw):
    return generation_settings(pipe, model="tiny", batch_size=2, **STEPS, **kw)


def test_generation_is_seeded_and_resumes_after_an_interruption(sd1_pipe, rows, tmp_path, monkeypatch):
    settings = _settings(sd1_pipe)
    real_save, saved = gen._save_png, []

    def crash_after_three(path, *args):
        if len(saved) == 3:
            raise KeyboardInterrupt
        saved.append(path)
        real_save(path, *args)

    monkeypatch.setattr(gen, "_save_png", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        gen.generate_images(sd1_pipe, rows, tmp_path / "run", settings, "tiny")
    monkeypatch.setattr(gen, "_save_png", real_save)
    first = {p: p.stat().st_mtime_ns for p in saved}
    assert gen.generate_images(sd1_pipe, rows, tmp_path / "run", settings, "tiny") == 2  # only the missing ones
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())  # finished images are skipped

    gen.generate_images(sd1_pipe, rows, tmp_path / "fresh", settings, "tiny")
    for row in rows:  # the resumed images equal those of an uninterrupted run
        a, b = (np.asarray(Image.open(gen.image_path(tmp_path / d, row))) for d in ("run", "fresh"))
        assert np.array_equal(a, b)
    record = json.loads(Image.open(gen.image_path(tmp_path / "run", rows[0])).text["erasure"])
    assert (record["prompt"], record["seed"]) == (rows[0].prompt, rows[0].seed)


def test_damaged_images_are_remade_and_foreign_ones_refused(sd1_pipe, rows, tmp_path):
    settings = _settings(sd1_pipe)
    gen.generate_images(sd1_pipe, rows, tmp_path, settings, "tiny")
    damaged = gen.image_path(tmp_path, rows[1])
    damaged.write_bytes(damaged.read_bytes()[:100])  # a write cut short
    assert gen.generate_images(sd1_pipe, rows, tmp_path, settings, "tiny") == 1
    with pytest.raises(ErasureError, match="num_inference_steps differ.*--overwrite"):
        gen.generate_images(sd1_pipe, rows, tmp_path, replace(settings, num_inference_steps=3), "tiny")
    assert gen.generate_images(sd1_pipe, rows, tmp_path, replace(settings, num_inference_steps=3), "tiny", overwrite=True) == 5


class _FakeProcesses:
    """What generate_images uses of accelerate.PartialState, for one of ``count`` processes."""

    def __init__(self, index, count):
        self.process_index, self.num_processes, self.is_local_main_process = index, count, index == 0

    def split_between_processes(self, items):
        from contextlib import contextmanager

        @contextmanager
        def share():
            per, extra = divmod(len(items), self.num_processes)
            start = self.process_index * per + min(self.process_index, extra)
            yield items[start:start + per + (self.process_index < extra)]

        return share()


def test_processes_split_rows_without_duplicates_or_loss(sd1_pipe, rows, tmp_path):
    settings = _settings(sd1_pipe)
    made = [gen.generate_images(sd1_pipe, rows, tmp_path, settings, "tiny", state=_FakeProcesses(i, 2)) for i in range(2)]
    assert made == [3, 2]
    assert len(gen.collect_images(rows, tmp_path, settings, "tiny")) == 5
    gen.image_path(tmp_path, rows[4]).unlink()
    with pytest.raises(ErasureError, match="missing"):
        gen.collect_images(rows, tmp_path, settings, "tiny")


def test_attacked_images_are_generated_as_their_prompts_would_be(tiny_pipe, rows, tmp_path):
    """With the prompt's own embedding in place of the adversarial one, the embedding path
    (pipeline_inputs and the pipeline's own negative) gives the prompt path's images."""
    from erasure.adapters import adapter_for

    class Identity:
        def pipeline_inputs(self, pipe, batch):
            adapter = adapter_for(pipe)
            return adapter.pipeline_inputs(adapter.encode([row.prompt for row in batch]), adapter.negative_embeddings(len(batch)))

    settings = _settings(tiny_pipe)
    gen.generate_images(tiny_pipe, rows[:2], tmp_path / "prompt", settings, "tiny")
    gen.generate_images(tiny_pipe, rows[:2], tmp_path / "embedded", settings, "tiny", attack={"name": "identity"},
                        conditioning=Identity())
    for row in rows[:2]:
        a, b = (np.asarray(Image.open(gen.image_path(tmp_path / d, row))) for d in ("prompt", "embedded"))
        assert np.array_equal(a, b)


def test_the_same_erasure_saved_twice_is_the_same_model(erased_file, tmp_path):
    from erasure.weights import EditedWeights

    again = tmp_path / "again.safetensors"
    EditedWeights.load(erased_file).save(again)  # new file, new creation time, same tensors
    first, second = (gen.weights_record(EditedWeights.load(p), p) for p in (erased_file, again))
    assert first["sha256"] == second["sha256"] and first["path"] != second["path"]


def test_a_failed_png_write_surfaces_and_earlier_images_are_kept(sd1_pipe, rows, tmp_path, monkeypatch):
    """Writes run on a worker thread; an error there (a full disk) still stops the run."""
    settings = _settings(sd1_pipe)
    real_save, saved = gen._save_png, []

    def disk_full_after_two(path, *args):
        if len(saved) == 2:
            raise OSError(28, "No space left on device")
        saved.append(path)
        real_save(path, *args)

    monkeypatch.setattr(gen, "_save_png", disk_full_after_two)
    with pytest.raises(OSError, match="No space left"):
        gen.generate_images(sd1_pipe, rows, tmp_path, settings, "tiny")
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(p.name for p in saved)
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written file left behind


def test_images_do_not_depend_on_the_batch_they_were_made_in(sd1_pipe, rows):
    in_pairs = gen.generate_in_memory(sd1_pipe, rows, _settings(sd1_pipe))
    together = gen.generate_in_memory(sd1_pipe, rows, replace(_settings(sd1_pipe), batch_size=5))
    for a, b in zip(in_pairs, together):  # the same seeds; batched arithmetic may differ in the last bit
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1


def test_guidance_zero_generates_without_guidance(sd1_pipe, rows, monkeypatch):
    """0 is a guidance (no classifier-free guidance: one UNet pass per step), not "the default"."""
    settings = _settings(sd1_pipe, guidance_scale=0.0)
    assert settings.guidance_scale == 0.0 and settings.pipeline_kwargs()["guidance_scale"] == 0.0
    batch_sizes = []
    real_forward = sd1_pipe.unet.forward

    def counting_forward(sample, *args, **kwargs):
        batch_sizes.append(sample.shape[0])
        return real_forward(sample, *args, **kwargs)

    monkeypatch.setattr(sd1_pipe.unet, "forward", counting_forward)
    gen.generate_in_memory(sd1_pipe, rows[:2], settings)
    assert batch_sizes == [2] * STEPS["num_inference_steps"]  # unguided: the batch itself, once per step
    batch_sizes.clear()
    gen.generate_in_memory(sd1_pipe, rows[:2], _settings(sd1_pipe, guidance_scale=7.5))
    assert batch_sizes == [4] * STEPS["num_inference_steps"]  # guided: conditional and unconditional in one call


def test_applied_weights_are_restored_and_checked_against_the_base(sd1_pipe, erased_file):
    from erasure.weights import EditedWeights

    weights = EditedWeights.load(erased_file)
    params = dict(sd1_pipe.unet.named_parameters())
    before = {name: params[name].detach().clone() for name in weights.tensors}
    with weights.applied(sd1_pipe):
        assert all(torch.equal(params[n], weights.tensors[n].to(params[n].dtype)) for n in weights.tensors)
    assert all(torch.equal(params[n], before[n]) for n in weights.tensors)

    name = next(iter(weights.tensors))
    with torch.no_grad():
        params[name].mul_(2.0)  # now another base
    with pytest.raises(ErasureError, match="--no-check-base"):
        with weights.applied(sd1_pipe):
            pass
    assert torch.equal(params[name], 2.0 * before[name])  # refused: nothing changed
    with weights.applied(sd1_pipe, check_base=False):
        assert torch.equal(params[name], weights.tensors[name].to(params[name].dtype))
    assert torch.equal(params[name], 2.0 * before[name])
