"""The ``erase`` command: the main job end to end, and one-line errors for bad input."""

import subprocess
import sys

import pytest
import torch
from diffusers import StableDiffusionPipeline

import erasure
from erasure.cli import main
from erasure.concepts import parse_concepts, read_concept_file
from erasure.tiny import build_tiny_pipeline
from erasure.tokenizer import clip_tokenizer, warn_if_truncated
from erasure.weights import EditedWeights


def test_erase_writes_weights_that_apply_loads(tiny_pipeline_folder, tmp_path, capsys):
    output = tmp_path / "airplane.safetensors"
    code = main(["--method", "uce", "--concepts", "airplane", "--model", str(tiny_pipeline_folder),
                 "--output", str(output), "--device", "cpu"])
    assert code == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "with uce: changed 8 UNet tensors" in summary and str(output) in summary
    pipe = erasure.load_pipeline(tiny_pipeline_folder, device="cpu")
    weights = EditedWeights.load(output)
    assert weights.base_model == str(tiny_pipeline_folder)
    erasure.apply(pipe, output)
    assert all(torch.equal(pipe.unet.get_parameter(k), v) for k, v in weights.tensors.items())


def test_config_file_and_set_override_in_order(tiny_pipeline_folder, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("lam: 0.2\nerase_scale: 2\n")
    output = tmp_path / "w.safetensors"
    assert main(["--method", "uce", "--concepts", "a; b", "--model", str(tiny_pipeline_folder), "--config",
                 str(config), "--set", "lam=0.3", "--preserve", "a dog, a cat", "--output", str(output)]) == 0
    weights = EditedWeights.load(output)
    assert weights.config["lam"] == 0.3 and weights.config["erase_scale"] == 2.0
    assert weights.config["preserve"] == ["a dog", "a cat"]
    assert weights.concepts == ["a", "b"]


def test_seed_seeds_the_methods_own_random_stream(tiny_pipeline_folder, tmp_path, capsys):
    # ESD draws concepts, steps and noise from its config's seed: --seed must reach it, or
    # runs meant to differ by seed are one run repeated.
    def esd(name, *extra):
        output = tmp_path / f"{name}.safetensors"
        code = main(["--method", "esd", "--concepts", "airplane", "--model", str(tiny_pipeline_folder), "--set",
                     "iterations=2", "--set", "ddim_steps=2", "--output", str(output), "--device", "cpu", *extra])
        return code, (EditedWeights.load(output) if code == 0 else None)

    _, default = esd("default")
    _, seed_1 = esd("seed-1", "--seed", "1")
    _, set_1 = esd("set-1", "--set", "seed=1")
    assert default.config["seed"] == 0 and seed_1.config["seed"] == 1
    assert any(not torch.equal(default.tensors[k], seed_1.tensors[k]) for k in default.tensors)
    assert all(torch.equal(seed_1.tensors[k], set_1.tensors[k]) for k in seed_1.tensors)
    capsys.readouterr()
    assert esd("both", "--seed", "1", "--set", "seed=2")[0] == 2
    assert "--seed and --set seed=... both set the seed: give one of them" in capsys.readouterr().err


def test_concepts_file(tiny_pipeline_folder, tmp_path):
    names = tmp_path / "concepts.txt"
    names.write_text("# objects\nairplane\ncar  # a comment\n\n")
    output = tmp_path / "w.safetensors"
    assert main(["--method", "uce", "--concepts-file", str(names), "--model", str(tiny_pipeline_folder),
                 "--output", str(output)]) == 0
    assert EditedWeights.load(output).concepts == ["airplane", "car"]


def test_export_diffusers(tiny_pipeline_folder, tmp_path):
    output = tmp_path / "w.safetensors"
    assert main(["--method", "uce", "--concepts", "airplane", "--model", str(tiny_pipeline_folder),
                 "--output", str(output), "--export", "diffusers"]) == 0
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "w-diffusers")
    for name, value in EditedWeights.load(output).tensors.items():
        assert torch.equal(pipe.unet.get_parameter(name), value)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--concepts", " , car"], "empty concept"),
        (["--concepts", "car, Car"], "given twice"),
        (["--concepts", "car", "--model", "/no/such/folder"], "not found"),
        (["--concepts", "car", "--set", "lamda=1"], "unknown config key 'lamda'"),
        (["--concepts", "car", "--set", "lam=big"], "UCEConfig.lam must be float"),
        (["--concepts", "car", "--resume"], "--resume applies to methods that train"),
        (["--concepts", "car", "--output", "w.pt"], "must end in .safetensors"),
        (["--concepts", "car", "--config", "/no/such.yaml"], "no such config file"),
        (["--concepts", "car", "--model", "weights.ckpt"], "not found"),
        ([], "exactly one"),
    ],
)
def test_bad_input_is_one_clear_line(tiny_pipeline_folder, extra, message, capsys):
    args = ["--method", "uce", "--model", str(tiny_pipeline_folder)] + extra
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_exponent_floats_are_read_as_numbers():
    # PyYAML reads "1e-3" (no dot) as a string; a user typing --set lr=1e-3 means a number.
    from erasure.config import build_config, parse_override
    from erasure.methods.esd import ESDConfig

    config = build_config(ESDConfig, dict([parse_override("lr=1e-3"), parse_override("negative_guidance=2")]))
    assert config.lr == 1e-3 and config.negative_guidance == 2.0


def test_existing_output_needs_overwrite(tiny_pipeline_folder, tmp_path, capsys):
    output = tmp_path / "w.safetensors"
    args = ["--method", "uce", "--concepts", "car", "--model", str(tiny_pipeline_folder), "--output", str(output)]
    assert main(args) == 0
    stamp = output.stat().st_mtime_ns
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert output.stat().st_mtime_ns == stamp
    assert main(args + ["--overwrite"]) == 0


def test_pickled_single_file_checkpoints_are_refused(tmp_path, capsys):
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"not really a pickle")
    assert main(["--method", "uce", "--concepts", "car", "--model", str(checkpoint)]) == 2
    assert "only .safetensors checkpoints" in capsys.readouterr().err


def test_unknown_method_exits_2_from_the_console_script():
    result = subprocess.run([sys.executable, "-m", "erasure.cli", "--method", "nope", "--concepts", "car"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'nope'" in result.stderr
    assert result.stderr.count("\n") == 1 and "erase --help" in result.stderr  # no usage block: one line


def test_wrong_base_model_fails_clearly_from_the_weights(tiny_pipeline_folder, tmp_path):
    output = tmp_path / "w.safetensors"
    assert main(["--method", "uce", "--concepts", "car", "--model", str(tiny_pipeline_folder),
                 "--output", str(output)]) == 0
    with pytest.raises(erasure.ErasureError, match="base model"):
        erasure.apply(build_tiny_pipeline("sd1", seed=7), output)


@pytest.mark.parametrize(
    "spec, message",
    [("red\x1b[31m car", "U\\+001B"), ("a\tb", "U\\+0009"), ("cat\ndog", "U\\+000A"), ("car\x85", "U\\+0085"),
     ("\u202eelgoog", "U\\+202E"), ("zero\u200bwidth", "U\\+200B"), ("bad\udc8dbytes", "U\\+DC8D"),
     ("cat->dog->bird", "more than one '->'"), ("->dog", "empty concept")],
)
def test_concept_text_is_plain_text(spec, message):
    with pytest.raises(erasure.ErasureError, match=message) as error:
        parse_concepts(spec)
    assert all(c.isprintable() for c in str(error.value))  # the message itself is safe to print


def test_plain_concepts_and_mappings_still_parse(tmp_path):
    assert [str(c) for c in parse_concepts("Van Gogh; cat->dog, car-> ")] == ["Van Gogh", "cat->dog", "car->"]
    assert parse_concepts(["family \u200d emoji"])[0].text == "family \u200d emoji"  # the joiner emoji need
    concepts = tmp_path / "concepts.txt"
    concepts.write_bytes(b"airplane\r\ncar\x0ctruck\n")  # a form feed is refused, not a line break
    with pytest.raises(erasure.ErasureError, match="U\\+000C"):
        read_concept_file(concepts)


def test_a_prompt_longer_than_the_text_encoder_reads_is_reported(caplog):
    tokenizer = clip_tokenizer()
    assert warn_if_truncated(tokenizer, ["a photo of an airplane"]) == []
    long = "airplane " * 80
    assert warn_if_truncated(tokenizer, [long, long], what="concept") == [long]
    assert caplog.text.count("is 82 tokens long; the text encoder reads only the first 77") == 1


def test_nothing_is_loaded_or_written_when_an_output_is_taken(tiny_pipeline_folder, tmp_path, capsys, monkeypatch):
    output = tmp_path / "w.safetensors"
    output.write_text("earlier")
    monkeypatch.setattr("erasure.loading.load_pipeline", lambda *a, **k: pytest.fail("loaded before checking outputs"))
    assert main(["--method", "uce", "--concepts", "car", "--model", str(tiny_pipeline_folder), "--output", str(output),
                 "--export", "diffusers"]) == 2
    assert "already exists" in capsys.readouterr().err and output.read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
