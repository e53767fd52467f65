"""Fixtures: the tiny pipelines of ``erasure.tiny`` (no network, no weights)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

from erasure.tiny import FAMILIES, build_tiny_pipeline  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


@pytest.fixture(scope="module")
def one_thread():
    """Small models gain nothing from threads, and lose ten-fold on two busy shared cores.

    Use per module: ``pytestmark = pytest.mark.usefixtures("one_thread")``. Module-scoped
    so that it is in force before the module's own module-scoped fixtures run: a result
    computed with two threads can differ in the last bits from one computed with one.
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


@pytest.fixture
def tiny_pipeline_folder(tmp_path_factory):
    """An SD 1.x-shaped pipeline saved as a diffusers folder (what ``--model PATH`` reads)."""
    folder = tmp_path_factory.mktemp("tiny-sd1")
    build_tiny_pipeline("sd1").save_pretrained(folder)
    return folder
