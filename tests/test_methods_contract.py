"""One contract for every registered method, on the tiny SD 1.x pipeline: adding a
method adds a row here. Fast settings keep each row to seconds; the methods' own
properties and erasure quality are tested in their own files."""

import ast
import copy
import dataclasses
from pathlib import Path

import pytest
import torch

import erasure
from erasure.methods import METHODS
from erasure.tiny import build_tiny_pipeline
from erasure.training import RunOptions
from erasure.weights import EditedWeights, joined_name

METHODS_DIR = Path(erasure.methods.__file__).parent


def _fast_settings(method: str, tmp_path) -> dict:
    return {
        "uce": {},
        "rece": {"epochs": 2, "validate": "none"},
        "esd": {"iterations": 2, "ddim_steps": 2, "lr": 1e-3},
        "mace": {"train_steps": 2, "images_per_concept": 1, "generation_steps": 2, "cache_dir": str(tmp_path / "mace")},
        "advunlearn": {"iterations": 2, "warmup": 1, "ddim_steps": 2, "lr": 1e-3, "attack_steps": 1, "bank_size": 2,
                       "retain_limit": 4},
    }[method]


def _state(pipe) -> dict[str, torch.Tensor]:
    """Every UNet and text-encoder tensor, under ``EditedWeights.tensors``' names."""
    return {joined_name(c, n): v.clone() for c in ("unet", "text_encoder") for n, v in getattr(pipe, c).state_dict().items()}


def test_every_registered_method_has_a_contract_row(tmp_path):
    for method in METHODS:
        _fast_settings(method, tmp_path)


@pytest.fixture(scope="module", params=sorted(METHODS))
def method_run(request, tmp_path_factory):
    """One erasure per method, shared by the tests below (which leave it as it was)."""
    method = request.param
    pipe = build_tiny_pipeline("sd1")
    before = _state(pipe)
    tmp_path = tmp_path_factory.mktemp(method)
    settings = _fast_settings(method, tmp_path)
    edited = erasure.erase(pipe, method, "a red circle", run=RunOptions(checkpoint_dir=tmp_path / "run"), **settings)
    return method, pipe, before, edited, settings


def test_the_pipeline_is_left_unchanged(method_run):
    _, pipe, before, _, _ = method_run
    assert all(torch.equal(before[k], v) for k, v in _state(pipe).items())


def test_applying_changes_exactly_the_declared_tensors(method_run):
    method, pipe, before, edited, _ = method_run
    pipe = copy.deepcopy(pipe)  # the shared pipe stays unedited for the other tests
    assert edited.method == method and edited.tensors
    assert all(edited.tensors[k].shape == before[k].shape for k in edited.tensors)
    edited.apply(pipe)
    changed = {k for k, v in _state(pipe).items() if not torch.equal(before[k], v)}
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


def test_provenance_is_recorded_by_the_registry(method_run):
    method, pipe, _, edited, settings = method_run
    assert edited.method == method and edited.concepts == ["a red circle"]
    assert edited.base_model == str(pipe.name_or_path) and set(edited.base_fingerprint) == set(edited.tensors)
    assert edited.config == dataclasses.asdict(erasure.resolve_config(method, **settings))
    assert edited.extra["erase_seconds"] > 0 and edited.extra["peak_rss_mb"] > 0


def imported_modules(path: Path) -> list[str]:
    """Absolute names of the modules a file imports."""
    package = ".".join(("erasure", *path.relative_to(METHODS_DIR.parent).with_suffix("").parts))
    package = package.rsplit(".", 1)[0] if path.name != "__init__.py" else package.removesuffix(".__init__")
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            names.append(".".join(base + ([node.module] if node.module else [])))
    return names


@pytest.mark.parametrize("path", sorted(METHODS_DIR.rglob("*.py")), ids=lambda p: str(p.relative_to(METHODS_DIR)))
def test_methods_import_neither_the_evaluator_nor_the_world(path):
    """Dependency direction: methods -> core. RECE's scorer and MACE's captions are passed
    in; only the registry builds the scorer, importing the evaluator on first use."""
    allowed = {"erasure.eval.validation"} if path == METHODS_DIR / "__init__.py" else set()
    bad = [m for m in imported_modules(path) if m.startswith(("erasure.eval", "erasure.world")) and m not in allowed]
    assert not bad, f"{path.name} imports {bad}"
    assert any(m.startswith("erasure.") for m in imported_modules(path))  # relative imports were resolved
