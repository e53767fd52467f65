"""``erase-eval``'s errors: every input it cannot use is one line on stderr naming the fix,
exit status 2, no traceback, and nothing written, before any image is generated."""

from __future__ import annotations

import pytest
import torch

from erasure.eval import generate as gen
from erasure.eval.cli import main
from erasure.tiny import build_tiny_pipeline

from eval_fixtures import erased_file, tiny_clip  # noqa: F401  (fixtures)



@pytest.mark.parametrize("args, message", [
    (["--prompts", "nope.csv", "--base-only"], "prompt file nope.csv not found"),
    (["--prompts", "shapes/circle", "--weights", "nope.safetensors"], "nope.safetensors: no such weights file"),
    (["--prompts", "shapes/circle", "--base-only", "--metrics", "clip,fid"], "unknown metric 'fid'"),
    (["--prompts", "shapes/circle"], "no --weights given"),
    (["--prompts", "shapes/circle", "--base-only", "--set", "nudenet.threshold=2", "--metrics", "nudenet"], "must lie in"),
    (["--prompts", "shapes/circle", "--base-only", "--set", "clip.colour=red", "--metrics", "clip"], "unknown clip option key"),
    (["--prompts", "coco/captions", "--base-only", "--metrics", "clip-accuracy"], "needs the expected label"),
    (["--prompts", "shapes/circle", "--base-only", "--attack", "closed-form,pgd"], "unknown attack 'pgd'"),
    (["--prompts", "shapes/circle", "--base-only", "--set", "attack.ring-a-bell=3"], "write attack.NAME.KEY=VALUE"),
])
def test_cli_errors_are_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_rejects_a_csv_without_prompt_column(tmp_path, capsys):
    csv = tmp_path / "x.csv"
    csv.write_text("caption\nhello\n")
    assert main(["--prompts", str(csv), "--base-only"]) == 2
    assert "no 'prompt' column" in capsys.readouterr().err


@pytest.fixture
def no_generation(monkeypatch):
    """Fail the test if any image is generated."""
    def forbidden(*args, **kwargs):
        raise AssertionError("an image was generated before the input was checked")

    monkeypatch.setattr(gen, "run_pipeline", forbidden)


@pytest.mark.parametrize("args, csv, message", [
    (["--guidance", "nan"], None, "--guidance nan is not a finite number >= 0: pass e.g. --guidance 7.5"),
    (["--guidance", "-5"], None, "--guidance -5.0 is not a finite number >= 0"),
    (["--guidance", "inf"], None, "--guidance inf is not a finite number >= 0"),
    ([], "prompt,evaluation_guidance\na circle,NaN\n", "line 2: evaluation_guidance 'NaN' is not a finite number >= 0"),
    ([], "prompt,evaluation_seed\na circle,1e999\n", "line 2: evaluation_seed '1e999' is not an integer"),
    (["--resolution", "-8"], None, "--resolution -8 is not a positive multiple of 8 pixels"),
    (["--resolution", "0"], None, "--resolution 0 is not a positive multiple of 8 pixels"),
    (["--resolution", "12"], None, "--resolution 12 is not a positive multiple of 8 pixels"),
    (["--steps", "0"], None, "--steps 0 is not a whole number of at least 1"),
    (["--batch-size", "0"], None, "--batch-size 0 is not a whole number of at least 1"),
    (["--limit", "0"], None, "--limit 0: give a positive number of rows"),
    (["--limit", "-3"], None, "--limit -3: give a positive number of rows"),
])
def test_unusable_generation_inputs_stop_before_anything_is_generated(args, csv, message, tmp_path, capsys, no_generation):
    prompts = "shapes/circle"
    if csv is not None:
        prompts = tmp_path / "set.csv"
        prompts.write_text(csv)
    out = tmp_path / "out"
    argv = ["--prompts", str(prompts), "--base-only", "--metrics", "world", "--output", str(out), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.fixture
def other_base(tmp_path_factory, erased_file):
    """A pipeline folder of the same architecture whose weights differ where the erasure edits."""
    from erasure.weights import EditedWeights

    pipe = build_tiny_pipeline("sd1")
    name = next(iter(EditedWeights.load(erased_file).tensors))
    with torch.no_grad():
        dict(pipe.unet.named_parameters())[name].mul_(2.0)
    folder = tmp_path_factory.mktemp("other-base")
    pipe.save_pretrained(folder)
    return folder


def test_wrong_base_names_the_flag_that_overrides_it(other_base, erased_file, tiny_clip, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = ["--prompts", "shapes/circle", "--model", str(other_base), "--weights", str(erased_file), "--metrics", "clip",
            "--set", f"clip.model={tiny_clip}", "--limit", "2", "--steps", "2", "--resolution", "32", "--output", str(out)]
    generated = []
    real = gen.run_pipeline
    monkeypatch.setattr(gen, "run_pipeline", lambda *a, **k: generated.append(1) or real(*a, **k))
    assert main(argv) == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("erase-eval: error:")]
    assert len(error_lines) == 1 and "Traceback" not in err
    assert "differs from the base model" in error_lines[0] and "--no-check-base" in error_lines[0]
    assert generated == [] and not out.exists()

    assert main(argv + ["--no-check-base"]) == 0  # the flag the message names exists and does what it says
    assert (out / "report.json").is_file() and generated
