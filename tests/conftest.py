"""Fixtures: one torch thread for the whole run, the tiny pipelines of ``erasure.tiny``
(no network, no weights); the ``slow`` marker and ``--runslow``; the longest scopes first."""

from __future__ import annotations

import os
import re

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

from erasure.tiny import FAMILIES, build_tiny_pipeline  # noqa: E402

# Tests that start other processes or run for minutes: marked slow here and skipped unless
# --runslow, so that the README's `pytest` stays within 6 minutes on a 2-core machine; CI
# (.ci/run) runs them after it. A key is a test's name (it keeps its mark when it moves
# between files) or a scope's node id (a module, or a class).
QUICK_BENCHMARK_TRAINED = "tests/test_benchmark.py::TestQuickTrainedVariants"
QUICK_BENCHMARK_CLOSED_FORM = "tests/test_benchmark.py::TestQuickClosedFormVariants"
SLOW_TESTS = {
    "test_torchrun_two_processes_share_the_rows": "starts two interpreters",
    "test_the_smoke_run_writes_every_figure": "runs scripts/gpu_bench.sh in a child process",
    QUICK_BENCHMARK_TRAINED: "the quick benchmark's trained half: 3.5 CPU-minutes",
    QUICK_BENCHMARK_CLOSED_FORM: "the quick benchmark's other half: 4 CPU-minutes",
}

# The scopes (a module, or a class where a module has classes: pyproject's --dist loadscope)
# whose fixtures take longest, started first, so that the workers finish together. xdist's
# own order (most tests first, turned off in pyproject) started the 3-test class that trains
# every benchmark variant (190 s of setup) last, with the other worker idle at the end: CI's
# tests took 389 s in that order and 332 s in this one (30 Nov 2026, README's Tests).
LONGEST_SCOPES = (QUICK_BENCHMARK_TRAINED, QUICK_BENCHMARK_CLOSED_FORM, "tests/test_seed_choice.py")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        return next((i for i, scope in enumerate(LONGEST_SCOPES) if item.nodeid.startswith(scope)), len(LONGEST_SCOPES))

    _check_names_exist(config)
    items.sort(key=rank)  # stable: every other test keeps its place
    run_slow = config.getoption("--runslow")
    for item in items:
        why = _why_slow(item)
        if why is None:
            continue
        item.add_marker(pytest.mark.slow)
        if not run_slow:
            item.add_marker(pytest.mark.skip(reason=f"slow ({why}): run with --runslow"))


def _check_names_exist(config) -> None:
    """A renamed test, module or class would otherwise drop out of SLOW_TESTS and
    LONGEST_SCOPES silently (back into the default run, in no particular order)."""
    sources = {path: path.read_text() for path in (config.rootpath / "tests").glob("test_*.py")}
    for key in sorted(set(SLOW_TESTS) | set(LONGEST_SCOPES)):
        path, name = _file_and_name(key)
        texts = [sources.get(config.rootpath / path, "")] if path else list(sources.values())
        definition = re.compile(rf"^\s*(class|def) {re.escape(name)}\b", re.MULTILINE)
        if not any(text and (not name or definition.search(text)) for text in texts):
            raise pytest.UsageError(f"tests/conftest.py names {key}, which does not exist: rename it there too")


def _file_and_name(key: str) -> tuple[str, str]:
    """A key's test file and its test or class name; either may be empty."""
    if "::" in key:
        path, name = key.split("::", 1)
        return path, name
    return (key, "") if key.endswith(".py") else ("", key)


def _why_slow(item) -> str | None:
    by_name = SLOW_TESTS.get(getattr(item, "originalname", item.name))
    return by_name or next((why for key, why in SLOW_TESTS.items() if item.nodeid.startswith(f"{key}::")), None)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Small models gain nothing from threads, and lose ten-fold on two busy shared cores.

    Session-scoped and autouse: in force before any module's fixtures compute, so that
    every result in the run comes from one thread (a result computed with two threads
    can differ in the last bits from one computed with one).
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(params=FAMILIES)
def tiny_pipe(request):
    return build_tiny_pipeline(request.param)


@pytest.fixture
def sd1_pipe():
    return build_tiny_pipeline("sd1")


@pytest.fixture(scope="session")
def tiny_pipeline_folder(tmp_path_factory):
    """An SD 1.x-shaped pipeline saved as a diffusers folder (what ``--model PATH`` reads);
    one for the run: tests only read it."""
    folder = tmp_path_factory.mktemp("tiny-sd1")
    build_tiny_pipeline("sd1").save_pretrained(folder)
    return folder
