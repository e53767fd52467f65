"""One contract for every registered method, on the tiny SD 1.x pipeline: adding a
method adds a row here. Fast settings keep each row to seconds; the methods' own
properties and erasure quality are tested in their own files."""

import copy

import pytest
import torch

import erasure
from erasure.methods import METHODS
from erasure.tiny import build_tiny_pipeline
from erasure.weights import EditedWeights


def _fast_settings(method: str, tmp_path) -> dict:
    return {
        "uce": {},
        "rece": {"epochs": 2, "validate": "none"},
        "esd": {"iterations": 2, "ddim_steps": 2, "lr": 1e-3, "checkpoint_dir": str(tmp_path / "esd")},
        "mace": {"train_steps": 2, "images_per_concept": 1, "generation_steps": 2, "cache_dir": str(tmp_path / "mace")},
    }[method]


def test_every_registered_method_has_a_contract_row(tmp_path):
    for method in METHODS:
        _fast_settings(method, tmp_path)


@pytest.fixture(scope="module", params=sorted(METHODS))
def method_run(request, tmp_path_factory):
    """One erasure per method, shared by the tests below (which leave it as it was)."""
    method = request.param
    pipe = build_tiny_pipeline("sd1")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    settings = _fast_settings(method, tmp_path_factory.mktemp(method))
    edited = erasure.erase(pipe, method, "a red circle", **settings)
    return method, pipe, before, edited, settings


def test_the_pipeline_is_left_unchanged(method_run):
    _, pipe, before, _, _ = method_run
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())


def test_applying_changes_exactly_the_declared_tensors(method_run):
    method, pipe, before, edited, _ = method_run
    pipe = copy.deepcopy(pipe)  # the shared pipe stays unedited for the other tests
    assert edited.method == method and edited.tensors
    assert all(edited.tensors[k].shape == before[k].shape for k in edited.tensors)
    edited.apply(pipe)
    changed = {k for k, v in pipe.unet.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == set(edited.tensors)


def test_save_load_round_trip(method_run, tmp_path):
    method, _, _, edited, _ = method_run
    loaded = EditedWeights.load(edited.save(tmp_path / f"{method}.safetensors"))
    assert loaded.method == method and loaded.concepts == ["a red circle"]
    assert loaded.config == edited.config
    assert all(torch.equal(loaded.tensors[k], v) for k, v in edited.tensors.items())


def test_same_seed_same_weights(method_run):
    method, _, _, edited, settings = method_run
    again = erasure.erase(build_tiny_pipeline("sd1"), method, "a red circle", **settings)
    assert all(torch.equal(again.tensors[k], v) for k, v in edited.tensors.items())
