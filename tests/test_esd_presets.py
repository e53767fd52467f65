"""The ESD presets that reproduce the authors' releases resolve to exactly the settings
checked against their code (docs/equivalence.md, "ESD"): a change of ESD's defaults or of
a preset file fails here."""

from __future__ import annotations

import dataclasses

import pytest

import erasure
from erasure.config import build_config, configs_dir, parse_override
from erasure.errors import ErasureError
from erasure.methods.esd import ESDConfig

AUTHORS_2023 = dict(  # train-scripts/train-esd.py (CompVis), its argument defaults
    iterations=1000, lr=1e-5, negative_guidance=1.0, start_guidance=3.0, ddim_steps=50,
    sample_from="edited", target_base="anchor", parameter_rules="2023", erase_from=None,
    batch_size=1, latent_size=None, seed=0, mixed_precision="no", timestep_scheme="compvis-2023",
    refresh_every=1, bank_size=8,
)
AUTHORS_2025 = dict(  # esd_sd.py (diffusers), its argument defaults and 1024 px
    iterations=200, lr=5e-5, negative_guidance=2.0, start_guidance=3.0, ddim_steps=50,
    sample_from="frozen", target_base="prompt", parameter_rules="2025", erase_from=None,
    batch_size=1, latent_size=128, seed=0, mixed_precision="bf16-pure", timestep_scheme="aligned",
    refresh_every=1, bank_size=8,
)
# Their --train_method is required: the concept type's config picks the variant.
VARIANTS = {"object": "esd-u", "nudity": "esd-u", "style": "esd-x", "celebrity": "esd-x"}


@pytest.mark.parametrize("preset, expected", [("authors-2023", AUTHORS_2023), ("authors-2025", AUTHORS_2025)])
@pytest.mark.parametrize("concept_type", sorted(VARIANTS))
def test_each_preset_resolves_to_the_authors_settings(preset, expected, concept_type):
    config = erasure.resolve_config("esd", concept_type, configs_dir() / "esd" / f"{preset}.yaml")
    assert dataclasses.asdict(config) == {**expected, "variant": VARIANTS[concept_type]}


def test_the_presets_differ_from_the_defaults_only_where_the_release_does():
    defaults = dataclasses.asdict(ESDConfig())
    differs = lambda preset: sorted(k for k, v in preset.items() if defaults[k] != v)  # noqa: E731
    assert differs(AUTHORS_2023) == ["timestep_scheme"]
    assert differs(AUTHORS_2025) == [
        "iterations", "latent_size", "lr", "mixed_precision", "negative_guidance", "parameter_rules", "sample_from",
        "target_base",
    ]


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
