"""Method configs: every bad value is refused where it enters (build_config, YAML,
``--set``, direct construction) with a one-line error naming the setting; nested configs
and command-line text reach their fields as written."""

from __future__ import annotations

import dataclasses

import pytest

import erasure
from erasure.concepts import CONCEPT_TYPES
from erasure.config import build_config, configs_dir, parse_override, read_yaml
from erasure.errors import ErasureError
from erasure.methods import METHODS
from erasure.methods.esd import ESDConfig
from erasure.methods.mace import MACEConfig
from erasure.methods.rece import RECEConfig
from erasure.methods.uce import UCEConfig

NAN, INF = float("nan"), float("inf")

# (method, setting, bad value, what the message says)
BAD_VALUES = [
    ("uce", "lam", NAN, "UCEConfig.lam must be a finite number"),
    ("uce", "lam", INF, "UCEConfig.lam must be a finite number"),
    ("uce", "lam", 0.0, "UCEConfig.lam must be greater than 0"),
    ("uce", "lam", -1.0, "UCEConfig.lam must be greater than 0"),
    ("uce", "erase_scale", 0.0, "UCEConfig.erase_scale must be greater than 0"),
    ("uce", "preserve_scale", -0.1, "UCEConfig.preserve_scale must be at least 0"),
    ("uce", "prompt_templates", [], "UCEConfig.prompt_templates"),
    ("uce", "prompt_templates", ["a painting"], "UCEConfig.prompt_templates"),
    ("uce", "token_choice", "first", "UCEConfig.token_choice must be one of"),
    ("rece", "reg", -1.0, "RECEConfig.reg must be at least 0"),
    ("rece", "epochs", 0, "RECEConfig.epochs must be at least 1"),
    ("rece", "validation_seeds", 0, "RECEConfig.validation_seeds must be at least 1"),
    ("rece", "lam", 0.0, "RECEConfig.lam must be greater than 0"),
    ("rece", "preserve_scale", -1.0, "RECEConfig.preserve_scale must be at least 0"),
    ("rece", "erase_scale", NAN, "RECEConfig.erase_scale must be a finite number"),
    ("rece", "uce.lam", NAN, "RECEConfig.uce.lam must be a finite number"),
    ("rece", "uce.lam", 0.0, "RECEConfig.uce.lam must be greater than 0"),
    ("rece", "uce", 3, "RECEConfig.uce must be a mapping"),
    ("esd", "lr", NAN, "ESDConfig.lr must be a finite number"),
    ("esd", "lr", 0.0, "ESDConfig.lr must be greater than 0"),
    ("esd", "lr", -1e-5, "ESDConfig.lr must be greater than 0"),
    ("esd", "negative_guidance", NAN, "ESDConfig.negative_guidance must be a finite number"),
    ("esd", "negative_guidance", -1.0, "ESDConfig.negative_guidance must be at least 0"),
    ("esd", "start_guidance", -3.0, "ESDConfig.start_guidance must be at least 0"),
    ("esd", "start_guidance", INF, "ESDConfig.start_guidance must be a finite number"),
    ("esd", "iterations", 0, "ESDConfig.iterations must be at least 1"),
    ("esd", "ddim_steps", 0, "ESDConfig.ddim_steps must be at least 1"),
    ("esd", "batch_size", 0, "ESDConfig.batch_size must be at least 1"),
    ("esd", "latent_size", 0, "ESDConfig.latent_size must be at least 1"),
    ("esd", "seed", -1, "ESDConfig.seed must be at least 0"),
    ("esd", "seed", 2**64, "ESDConfig.seed must be at most"),
    ("esd", "variant", "esd-z", "ESDConfig.variant must be one of"),
    ("esd", "erase_from", " ", "ESDConfig.erase_from is empty"),
    ("mace", "lam", NAN, "MACEConfig.lam must be a finite number"),
    ("mace", "lam", -1.0, "MACEConfig.lam must be at least 0"),
    ("mace", "preserve_scale", -1e-4, "MACEConfig.preserve_scale must be at least 0"),
    ("mace", "fuse_preserve_scale", NAN, "MACEConfig.fuse_preserve_scale must be a finite number"),
    ("mace", "domain_weight", -1.0, "MACEConfig.domain_weight must be at least 0"),
    ("mace", "general_equivalent_captions", 0, "MACEConfig.general_equivalent_captions must be at least 1"),
    ("mace", "train_steps", -1, "MACEConfig.train_steps must be at least 0"),
    ("mace", "learning_rate", 0.0, "MACEConfig.learning_rate must be greater than 0"),
    ("mace", "lora_rank", 0, "MACEConfig.lora_rank must be at least 1"),
    ("mace", "weight_decay", -0.01, "MACEConfig.weight_decay must be at least 0"),
    ("mace", "max_grad_norm", 0.0, "MACEConfig.max_grad_norm must be greater than 0"),
    ("mace", "images_per_concept", 0, "MACEConfig.images_per_concept must be at least 1"),
    ("mace", "generation_steps", 0, "MACEConfig.generation_steps must be at least 1"),
    ("mace", "generation_guidance", -1.0, "MACEConfig.generation_guidance must be at least 0"),
    ("mace", "resolution", -8, "MACEConfig.resolution must be at least 8"),
    ("mace", "resolution", 36, "MACEConfig.resolution must be a multiple of 8"),
    ("mace", "mask_threshold", 1.0, "MACEConfig.mask_threshold must be less than 1"),
    ("mace", "mask_threshold", 0.0, "MACEConfig.mask_threshold must be greater than 0"),
    ("mace", "mask_timesteps", [200, 1000], "MACEConfig.mask_timesteps must be at most 999"),
    ("mace", "mask_timesteps", [], "MACEConfig.mask_timesteps is empty"),
    ("mace", "box_threshold", 1.5, "MACEConfig.box_threshold must be at most 1"),
    ("mace", "seed", -1, "MACEConfig.seed must be at least 0"),
    ("mace", "templates", "animals", "unknown MACE template set"),
    ("mace", "image_prompt", "a photo", "MACEConfig.image_prompt"),
]


@pytest.mark.parametrize("method, key, value, message", BAD_VALUES, ids=lambda v: str(v))
def test_bad_values_are_one_line_errors_naming_the_setting(method, key, value, message):
    with pytest.raises(ErasureError, match=message.replace("(", r"\(")) as raised:
        erasure.resolve_config(method, **{key: value})
    assert len(str(raised.value).splitlines()) == 1


# A nested config is written as a mapping only in YAML and --set.
@pytest.mark.parametrize("method, key, value, message", [row for row in BAD_VALUES if not row[1].startswith("uce")],
                         ids=lambda v: str(v))
def test_direct_construction_is_checked_too(method, key, value, message):
    with pytest.raises(ErasureError, match=message.split(" must")[0].split(" is ")[0]):
        METHODS[method].config_class(**{key: value})


def test_replace_is_checked():
    with pytest.raises(ErasureError, match="UCEConfig.lam must be greater than 0"):
        dataclasses.replace(UCEConfig(), lam=0.0)


@pytest.mark.parametrize("text", ["lam=.nan", "lam=.inf", "lam=-.inf"])
def test_non_finite_command_line_values_are_refused(text):
    with pytest.raises(ErasureError, match="UCEConfig.lam must be a finite number"):
        build_config(UCEConfig, dict([parse_override(text)]))


def test_command_line_text_reaches_text_settings_as_typed():
    overrides = dict(parse_override(item) for item in ["parameter_rules=2025", "mixed_precision=no", "lr=1e-3",
                                                       "erase_from=null", "negative_guidance=2"])
    config = build_config(ESDConfig, overrides)
    assert (config.parameter_rules, config.mixed_precision, config.lr) == ("2025", "no", 1e-3)
    assert config.erase_from is None and config.negative_guidance == 2.0
    uce = build_config(UCEConfig, dict([parse_override("guide="), parse_override("preserve=[a dog, a cat]")]))
    assert uce.guide == "" and uce.preserve == ["a dog", "a cat"]
    with pytest.raises(ErasureError, match="ESDConfig.iterations must be int"):
        build_config(ESDConfig, dict([parse_override("iterations=many")]))


def test_nested_configs_from_yaml_command_line_and_instances(tmp_path):
    yaml_file = tmp_path / "rece.yaml"
    yaml_file.write_text("uce:\n  lam: 0.3\n  guide: art\nepochs: 2\n")
    config = erasure.resolve_config("rece", "style", yaml_file, **dict([parse_override("uce.erase_scale=2")]))
    assert (config.uce.lam, config.uce.guide, config.uce.erase_scale, config.epochs) == (0.3, "art", 2.0, 2)
    assert config.uce.preserve_scale == UCEConfig().preserve_scale  # the rest keeps UCE's defaults
    again = erasure.resolve_config("rece", "object", config)
    assert again == config
    with pytest.raises(ErasureError, match="it is 'uce.preserve' there"):
        erasure.resolve_config("rece", preserve=["a dog"])
    with pytest.raises(ErasureError, match="unknown config key 'lamda' for UCEConfig"):
        erasure.resolve_config("rece", **{"uce.lamda": 1.0})
    with pytest.raises(ErasureError, match="unknown config key 'lam.x'"):
        erasure.resolve_config("rece", **{"lam.x": 1.0})


def test_run_options_are_not_config_settings():
    with pytest.raises(ErasureError, match="resume is a run option.*RunOptions"):
        erasure.resolve_config("esd", resume=True)
    with pytest.raises(ErasureError, match="checkpoint_every is a run option"):
        erasure.resolve_config("mace", config={"checkpoint_every": 5})


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("concept_type", CONCEPT_TYPES)
def test_every_packaged_config_resolves(method, concept_type):
    config = erasure.resolve_config(method, concept_type)
    assert isinstance(config, METHODS[method].config_class)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_extra_yaml_resolves(method):
    for path in sorted((configs_dir() / method).glob("*.yaml")):
        erasure.resolve_config(method, "object", path)
        assert read_yaml(path) is not None


def test_rece_presets_nest_the_uce_edit():
    assert erasure.resolve_config("rece", "style").uce.guide == "art"
    assert erasure.resolve_config("rece", "celebrity").uce.guide == "a person"
    assert isinstance(RECEConfig().uce, UCEConfig) and MACEConfig().general_captions == "builtin"
