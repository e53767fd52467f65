"""Fixtures: the tiny pipelines of ``erasure.tiny`` (no network, no weights)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

from erasure.tiny import FAMILIES, build_tiny_pipeline  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


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
