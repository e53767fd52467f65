"""report.html as a person sees it: opened in a real headless Chromium (Debian's
``chromium`` package; ``.ci/run`` installs it), the rendered page must hold the summary
and per-class tables as HTML tables with their intervals, every image loaded, and a
screenshot that is not blank."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from erasure.eval import evaluate
from erasure.tiny import build_tiny_pipeline

from eval_fixtures import STEPS, erased_file  # noqa: F401  (a fixture)

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium: apt-get install chromium (.ci/run does)")
WINDOW = (1280, 1600)
ROWS = 6


def chromium(page, profile, *arguments: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on a local page (flags for a root user in a container,
    nothing fetched from the network, a fresh profile)."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=5000", *arguments, page.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True)


@pytest.fixture(scope="module")
def report_page(erased_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    evaluate(build_tiny_pipeline("sd1"), erased_file, "shapes/circle", ["world"], out, limit=ROWS, batch_size=ROWS,
             **STEPS)
    return out / "report.html"


def test_the_page_renders_its_tables_and_every_image(report_page, tmp_path):
    dom = chromium(report_page, tmp_path / "profile", "--dump-dom").stdout
    assert "<pre" not in dom  # no markdown left as raw text
    tables = re.findall(r"<table.*?</table>", dom, flags=re.S)
    summary = next(t for t in tables if "Acc_e (erased), top-1 %" in t)
    assert re.search(r"<td class=\"num\">\d+\.\d \[[\d.]+-[\d.]+\]</td>", summary)  # a number with its interval
    assert any("<th>class</th>" in t and "base top-1 %" in t for t in tables)  # the per-class table
    assert any("per phrasing" in heading for heading in re.findall(r"<h3>(.*?)</h3>", dom))
    images = re.findall(r"<img [^>]*>", dom)
    assert len(images) == 2 * ROWS  # base and erased, every row
    assert all('data-loaded="true"' in image for image in images), [i for i in images if 'data-loaded="true"' not in i]
    assert dom.index("Acc_e (erased), top-1 %") < dom.index("<img")  # the numbers first, the images below


def test_a_screenshot_shows_the_page(report_page, tmp_path):
    shot = tmp_path / "page.png"
    chromium(report_page, tmp_path / "profile", f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}")
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (WINDOW[1], WINDOW[0])
    assert (pixels < 128).mean() > 0.005  # text and table rules, not a blank page
    rows_with_ink = (pixels < 200).any(axis=1)
    assert rows_with_ink[: WINDOW[1] // 2].mean() > 0.2  # the top half holds the report, not an empty frame
