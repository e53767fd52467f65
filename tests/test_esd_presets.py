"""ESD's preset files and text settings (the presets themselves are pinned in
tests/test_presets.py with the others)."""

from __future__ import annotations


import pytest

import erasure
from erasure.config import build_config, configs_dir, parse_override
from erasure.errors import ErasureError
from erasure.methods.esd import ESDConfig

def test_fast_yaml_no_longer_claims_the_2025_resolution_or_precision():
    config = erasure.resolve_config("esd", "object", configs_dir() / "esd" / "fast.yaml")
    assert config.latent_size is None and config.mixed_precision == "bf16"
    assert "authors-2025.yaml" in (configs_dir() / "esd" / "fast.yaml").read_text()


@pytest.mark.parametrize(
    "text, field, value",
    [
        ("parameter_rules=2025", "parameter_rules", "2025"),
        ("parameter_rules=2023", "parameter_rules", "2023"),
        ("mixed_precision=no", "mixed_precision", "no"),
        ("mixed_precision=bf16-pure", "mixed_precision", "bf16-pure"),
        ("timestep_scheme=compvis-2023", "timestep_scheme", "compvis-2023"),
        ("latent_size=128", "latent_size", 128),
        ("erase_from=null", "erase_from", None),
    ],
)
def test_set_values_reach_the_config_as_typed(text, field, value):
    """YAML reads 2025 as an integer and no as false: a text setting takes the text."""
    key, given = parse_override(text)
    assert getattr(build_config(ESDConfig, {key: given}), field) == value


@pytest.mark.parametrize("text, named", [("mixed_precision=yes", "mixed_precision"), ("parameter_rules=2024", "parameter_rules")])
def test_set_values_outside_the_choices_are_refused(text, named):
    key, given = parse_override(text)
    with pytest.raises(ErasureError, match=named):
        build_config(ESDConfig, {key: given})


def test_the_command_line_takes_the_preset_and_set_values(tiny_pipeline_folder, tmp_path, capsys):
    from erasure.cli import main

    out = tmp_path / "w.safetensors"
    code = main([
        "--method", "esd", "--concepts", "circle", "--model", str(tiny_pipeline_folder), "--output", str(out),
        "--config", str(configs_dir() / "esd" / "authors-2025.yaml"),
        "--set", "iterations=2", "--set", "ddim_steps=2", "--set", "latent_size=8", "--set", "mixed_precision=no",
        "--set", "parameter_rules=2025",
    ])
    assert code == 0 and out.is_file()
    assert erasure.EditedWeights.load(out).config["mixed_precision"] == "no"
