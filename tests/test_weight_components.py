"""Weights that edit the text encoders as well as the UNet (format 2): round trips through
save, apply and plain diffusers, format 1 still loading, the base checked per component,
plug-and-play transfer of a text encoder, other key layouts, exports."""

import dataclasses
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import erasure
from erasure.adapters import adapter_for
from erasure.concepts import parse_concepts
from erasure.edit import Edit
from erasure.eval import evaluate
from erasure.eval.generate import weights_record
from erasure.lora_export import export_lora
from erasure.methods import Method
from erasure.tiny import _text_encoder, build_tiny_pipeline
from erasure.weights import BaseMismatchWarning, EditedWeights, export_pipeline, joined_name

from eval_fixtures import STEPS, tiny_clip  # noqa: F401  (fixture)

README = Path(__file__).resolve().parents[1] / "README.md"
PROMPT = "a red circle on grass"
# Per family: the components edited and, in each, the tensors changed.
EDITED = {
    "sd1": {"unet": ["conv_in.weight"], "text_encoder": ["encoder.layers.0.mlp.fc1.weight", "final_layer_norm.weight"]},
    "sdxl": {"text_encoder": ["encoder.layers.1.self_attn.v_proj.weight"],
             "text_encoder_2": ["text_model.encoder.layers.0.mlp.fc2.weight", "text_projection.weight"]},
}


@dataclasses.dataclass
class _Config:
    """A config for the test method (no settings of its own)."""

    scale: float = 0.5


def _shift(pipe, concepts, config, run) -> Edit:
    """A test method: adds ``scale`` times a fixed pattern to the tensors of ``EDITED``."""
    family = adapter_for(pipe).family
    original = {c: {n: getattr(pipe, c).get_parameter(n) for n in names} for c, names in EDITED[family].items()}
    generator = torch.Generator().manual_seed(1)
    new = {c: {n: v.detach() + config.scale * torch.randn(v.shape, generator=generator) for n, v in values.items()}
           for c, values in original.items()}
    return Edit(new, original, {"note": "shifted"})


SHIFT = Method("shift", _Config, _shift, trains=False)


def _outputs(pipe):
    """The text embeddings (and pooled ones) and a noise prediction from them."""
    adapter = adapter_for(pipe)
    latents = torch.randn(1, *adapter.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cond = adapter.encode([PROMPT])
        noise = adapter.predict_noise(latents, 500, cond)
    pooled = cond.pooled
    return [cond.hidden, noise] + ([pooled] if pooled is not None else [])


def _same(first, second) -> bool:
    return all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def _readme_plain_loader():
    """The README's diffusers-only loading snippet, as a function of ``pipe`` and the file."""
    block = re.search(r"```python\n(from safetensors.torch import load_file\nstate = load_file.*?)```", README.read_text(),
                      re.S).group(1)
    def load(pipe, path):
        exec(block.replace('"circle.safetensors"', repr(str(path))), {"pipe": pipe})
    return load


@pytest.fixture(params=["sd1", "sdxl"])
def family(request):
    return request.param


@pytest.fixture
def edited(family):
    return SHIFT.run(build_tiny_pipeline(family), parse_concepts("circle"), _Config())


def test_the_registry_keeps_every_component_with_provenance(edited, family):
    assert {c: sorted(v) for c, v in edited.components.items()} == {c: sorted(n) for c, n in EDITED[family].items()}
    assert set(edited.base_fingerprint) == set(edited.tensors)
    assert edited.method == "shift" and edited.concepts == ["circle"] and edited.config == {"scale": 0.5}
    assert edited.base_model == f"tiny-{family}-seed0" and edited.extra["note"] == "shifted"
    assert "erase_seconds" in edited.extra


def test_an_edit_round_trips_through_save_apply_and_plain_diffusers(edited, family, tmp_path):
    path = edited.save(tmp_path / "w.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        meta, keys = handle.metadata(), set(handle.keys())
    assert meta["format_version"] == "2" and json.loads(meta["components"]) == list(EDITED[family])
    assert keys == {joined_name(c, n) for c, names in EDITED[family].items() for n in names}  # UNet names bare
    assert set(json.loads(meta["base_fingerprint"])) == keys
    layout = json.loads(meta["key_layout"])
    assert layout.get("text_encoder") == "" and layout.get("text_encoder_2", "text_model.") == "text_model."

    loaded = EditedWeights.load(path)
    assert loaded.tensors.keys() == edited.tensors.keys()
    assert all(torch.equal(loaded.tensors[n], v) for n, v in edited.tensors.items())
    base = _outputs(build_tiny_pipeline(family))
    expected = _outputs(edited.apply(build_tiny_pipeline(family)))
    assert not torch.equal(base[0], expected[0])  # the text embedding moved
    assert _same(_outputs(erasure.apply(build_tiny_pipeline(family), path)), expected)
    plain = build_tiny_pipeline(family)
    _readme_plain_loader()(plain, path)
    assert _same(_outputs(plain), expected)


def test_applied_swaps_every_component_in_and_back(edited, family):
    pipe = build_tiny_pipeline(family)
    base = _outputs(pipe)
    with edited.applied(pipe):
        assert _same(_outputs(pipe), _outputs(edited.apply(build_tiny_pipeline(family))))
    assert _same(_outputs(pipe), base)


def test_a_format_1_file_still_loads(tmp_path):
    pipe = build_tiny_pipeline("sd1")
    unet_only = erasure.erase(pipe, "uce", "circle")
    prints = {name: values for name, values in unet_only.base_fingerprint.items()}
    meta = {**unet_only.metadata(), "format_version": "1", "base_fingerprint": json.dumps(prints)}
    del meta["components"], meta["key_layout"]
    save_file(unet_only.tensors, str(tmp_path / "v1.safetensors"), metadata=meta)  # bare UNet names, as format 1
    old = EditedWeights.load(tmp_path / "v1.safetensors")
    assert list(old.components) == ["unet"] and old.tensors.keys() == unet_only.tensors.keys()
    assert _same(_outputs(erasure.apply(build_tiny_pipeline("sd1"), tmp_path / "v1.safetensors")),
                 _outputs(unet_only.apply(build_tiny_pipeline("sd1"))))
    assert weights_record(old)["sha256"] == weights_record(unet_only)["sha256"]


@pytest.mark.parametrize("family, component, written, installed",
                         [("sd1", "text_encoder", "text_model.", ""), ("sdxl", "text_encoder_2", "", "text_model.")],
                         ids=["prefix-removed", "prefix-added"])
def test_another_key_layout_is_normalised_and_plain_loading_shows_the_mismatch(family, component, written, installed,
                                                                               tmp_path):
    edited = SHIFT.run(build_tiny_pipeline(family), parse_concepts("circle"), _Config())

    def relaid(name):  # as another transformers names the parameters (text_model. inside the component)
        owner, rest = name.split(".", 1) if name.startswith(component + ".") else (None, name)
        return name if owner is None or rest.startswith("text_projection") else \
            f"{owner}.{written}{rest.removeprefix(installed)}"

    other_layout = dataclasses.replace(edited, tensors={relaid(n): v for n, v in edited.tensors.items()},
                                       base_fingerprint={relaid(n): v for n, v in edited.base_fingerprint.items()})
    assert other_layout.tensors.keys() != edited.tensors.keys()
    path = other_layout.save(tmp_path / "w.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        assert json.loads(handle.metadata()["key_layout"])[component] == written
    expected = _outputs(edited.apply(build_tiny_pipeline(family)))
    assert _same(_outputs(erasure.apply(build_tiny_pipeline(family), path)), expected)
    names = EditedWeights.load(path).parameters_in(build_tiny_pipeline(family))[component]
    assert sorted(names) == sorted(EDITED[family][component])  # the installed layout's names
    # What strict=False does with the other layout: nothing loaded, reported only in unexpected_keys.
    plain = build_tiny_pipeline(family)
    part = {k.split(".", 1)[1]: v for k, v in load_file(path).items() if k.startswith(component + ".")}
    before = {n: v.clone() for n, v in getattr(plain, component).state_dict().items()}
    result = getattr(plain, component).load_state_dict(part, strict=False)
    assert result.unexpected_keys
    changed = [n for n, v in getattr(plain, component).state_dict().items() if not torch.equal(before[n], v)]
    assert all(n.startswith("text_projection") for n in changed)  # nothing else loaded
    with pytest.raises(AssertionError):
        _readme_plain_loader()(build_tiny_pipeline(family), path)


def test_a_name_no_parameter_matches_is_refused_checked_or_not(edited, family):
    component, name = next((c, n) for c, names in EDITED[family].items() if c != "unet" for n in names)
    wrong = f"{component}.encoder.layers.7.mlp.fc1.weight"
    renamed = dataclasses.replace(
        edited, tensors={**edited.tensors, wrong: edited.tensors[f"{component}.{name}"]},
        base_fingerprint={**edited.base_fingerprint, wrong: edited.base_fingerprint[f"{component}.{name}"]})
    pipe = build_tiny_pipeline(family)
    before = _outputs(pipe)
    for check_base in (True, False):
        with pytest.raises(erasure.ErasureError, match=rf"edit '{re.escape(wrong)}', which this pipeline's {component} "
                                                       r"\(CLIPTextModel\w*\) does not have") as error:
            renamed.apply(pipe, check_base=check_base)
        assert "\n" not in str(error.value)
    assert _same(_outputs(pipe), before)


@pytest.mark.parametrize("other", ["unet", "text_encoder"])
def test_another_base_is_refused_per_component(other, tmp_path):
    path = SHIFT.run(build_tiny_pipeline("sd1"), parse_concepts("circle"), _Config()).save(tmp_path / "w.safetensors")
    pipe = build_tiny_pipeline("sd1")
    setattr(pipe, other, getattr(build_tiny_pipeline("sd1", seed=1), other))
    before = _outputs(pipe)
    with pytest.raises(erasure.ErasureError, match=rf"this pipeline's {other} differs from the base model") as error:
        erasure.apply(pipe, path)
    assert ("components=['text_encoder'], check_base=False" in str(error.value)) == (other == "text_encoder")
    assert _same(_outputs(pipe), before)


def test_a_text_encoder_transfers_to_another_model_of_the_family_with_a_warning(tmp_path):
    edited = SHIFT.run(build_tiny_pipeline("sd1"), parse_concepts("circle"), _Config())
    path = edited.save(tmp_path / "w.safetensors")
    other = build_tiny_pipeline("sd1", seed=1)
    other.text_encoder.load_state_dict(build_tiny_pipeline("sd1", seed=2).text_encoder.state_dict())
    unet_before = {n: p.detach().clone() for n, p in other.unet.named_parameters()}
    with pytest.raises(erasure.ErasureError, match="text_encoder differs"):
        erasure.apply(other, path, components=["text_encoder"])
    with pytest.warns(BaseMismatchWarning, match="text_encoder differs from their base model, so the result is a transfer"):
        erasure.apply(other, path, components=["text_encoder"], check_base=False)
    assert all(torch.equal(other.text_encoder.get_parameter(n), v) for n, v in edited.components["text_encoder"].items())
    assert all(torch.equal(p, unet_before[n]) for n, p in other.unet.named_parameters())  # the UNet edit stayed out
    # The same model: nothing to warn about.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        erasure.apply(build_tiny_pipeline("sd1"), path, components=["text_encoder"], check_base=False)
    with pytest.raises(erasure.ErasureError, match="hold no text_encoder_2 tensors: choose among unet, text_encoder"):
        erasure.apply(other, path, components=["text_encoder_2"])


def test_a_text_encoder_of_another_family_is_refused_in_one_line(tmp_path):
    path = SHIFT.run(build_tiny_pipeline("sd1"), parse_concepts("circle"), _Config()).save(tmp_path / "w.safetensors")
    pipe = build_tiny_pipeline("sd1")
    pipe.text_encoder = _text_encoder(48)
    for check_base in (True, False):
        with pytest.raises(erasure.ErasureError, match=r"has shape \(37, 32\) in the weights but \(37, 48\) in this "
                                                       r"pipeline's text_encoder: .* another family") as error:
            erasure.apply(pipe, path, components=["text_encoder"], check_base=check_base)
        assert "\n" not in str(error.value)


def test_non_finite_or_unprefixed_text_encoder_tensors_are_refused(edited, tmp_path):
    name = next(n for n in edited.tensors if n.startswith("text_encoder"))
    broken = dataclasses.replace(edited, tensors={**edited.tensors, name: torch.full_like(edited.tensors[name], float("nan"))})
    with pytest.raises(erasure.ErasureError, match=f"NaN or infinite values in {name}"):
        broken.save(tmp_path / "nan.safetensors")
    with pytest.raises(erasure.ErasureError, match="NaN or infinite"):
        broken.apply(build_tiny_pipeline(edited.base_model.split("-")[1]), check_base=False)
    path = edited.save(tmp_path / "w.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    tensors = load_file(path)
    tensors["encoder.layers.0.mlp.fc1.weight"] = tensors.pop(f"{name.split('.', 1)[0]}.{name.split('.', 1)[1]}")
    save_file(tensors, str(tmp_path / "bare.safetensors"), metadata=meta)
    # An unprefixed name reads as a UNet name: refused, checked (no fingerprint for it) or not (no such parameter).
    with pytest.raises(erasure.ErasureError, match="no base fingerprint for encoder.layers.0.mlp.fc1.weight"):
        erasure.apply(build_tiny_pipeline(edited.base_model.split("-")[1]), tmp_path / "bare.safetensors")
    with pytest.raises(erasure.ErasureError, match=r"edit 'encoder.layers.0.mlp.fc1.weight', which this pipeline's "
                                                   r"unet .* does not have"):
        erasure.apply(build_tiny_pipeline(edited.base_model.split("-")[1]), tmp_path / "bare.safetensors",
                      check_base=False)
    nan_file = {k: torch.full_like(v, float("inf")) if k.startswith("text_encoder") else v for k, v in load_file(path).items()}
    save_file(nan_file, str(tmp_path / "inf.safetensors"), metadata=meta)
    with pytest.raises(erasure.ErasureError, match="inf.safetensors is unusable"):
        EditedWeights.load(tmp_path / "inf.safetensors")


def test_export_diffusers_carries_the_text_encoder_change(edited, family, tmp_path):
    pipe = build_tiny_pipeline(family)
    before = _outputs(pipe)
    folder = export_pipeline(edited, pipe, tmp_path / "pipe")
    assert _same(_outputs(pipe), before)  # the source pipeline is restored
    reopened = (StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline).from_pretrained(folder)
    for component in ("unet", "text_encoder", "text_encoder_2", "vae"):
        if getattr(pipe, component, None) is None:
            continue
        expected = {**getattr(pipe, component).state_dict(), **edited.components.get(component, {})}
        saved = getattr(reopened, component).state_dict()
        assert saved.keys() == expected.keys(), component
        assert all(torch.equal(saved[n], v) for n, v in expected.items()), component  # the edit and nothing else
    if family == "sd1":  # (a reloaded tiny SDXL pools its text differently even unedited: diffusers' own round trip)
        reopened.tokenizer = pipe.tokenizer
        assert _same(_outputs(reopened), _outputs(edited.apply(build_tiny_pipeline(family))))


def test_lora_export_of_a_text_encoder_edit_is_a_clear_error(edited, tmp_path):
    with pytest.raises(erasure.ErasureError, match="a LoRA export covers UNet tensors only.*--export diffusers"):
        export_lora(edited, build_tiny_pipeline(edited.base_model.split("-")[1]), tmp_path / "l.safetensors")
    assert not list(tmp_path.iterdir())


def test_the_weights_hash_covers_the_text_encoder(edited):
    name = next(n for n in edited.tensors if n.startswith("text_encoder"))
    moved = dataclasses.replace(edited, tensors={**edited.tensors, name: edited.tensors[name] + 1e-3})
    assert weights_record(moved)["sha256"] != weights_record(edited)["sha256"]


def test_evaluation_applies_a_text_encoder_edit_and_restores_the_pipeline(tiny_clip, tmp_path):
    pipe = build_tiny_pipeline("sd1")
    text_only = SHIFT.run(pipe, parse_concepts("circle"), _Config()).only(["text_encoder"])
    path = text_only.save(tmp_path / "w.safetensors")
    before = {n: v.clone() for n, v in pipe.text_encoder.state_dict().items()}
    evaluate(pipe, path, "shapes/circle", {"clip": {"model": str(tiny_clip)}}, tmp_path / "eval", limit=2, **STEPS)
    assert all(torch.equal(before[n], v) for n, v in pipe.text_encoder.state_dict().items())
    images = {variant: sorted((tmp_path / "eval" / variant).glob("*.png")) for variant in ("base", "erased")}
    assert len(images["base"]) == len(images["erased"]) == 2
    for base, erased in zip(images["base"], images["erased"]):
        assert not np.array_equal(np.asarray(Image.open(base)), np.asarray(Image.open(erased)))
