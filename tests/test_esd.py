"""ESD on the tiny pipelines: which tensors train, the objective, resume, failure modes."""

from __future__ import annotations

import json
import signal

import pytest
import torch

import erasure
from erasure.concepts import Concept
from erasure.errors import ErasureError
from erasure.methods import esd
from erasure.methods.esd import ESDConfig

# A few iterations over a 2-step DDIM schedule keep each run to about a second.
FAST = dict(iterations=3, ddim_steps=2, lr=1e-3)


def snapshot(pipe) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in pipe.unet.state_dict().items()}


def assert_unchanged(pipe, before):
    after = pipe.unet.state_dict()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert not changed, f"erase() left the pipeline edited: {changed[:3]}"


# ---- which parameters train ------------------------------------------------------


@pytest.mark.parametrize("variant", ["esd-x", "esd-u"])
def test_only_the_selected_subset_changes(tiny_pipe, variant):
    before = snapshot(tiny_pipe)
    edited = esd.erase(tiny_pipe, [Concept("a red circle")], ESDConfig(variant=variant, **FAST))
    assert_unchanged(tiny_pipe, before)
    names = edited.extra["parameters"]
    assert sorted(edited.tensors) == sorted(names)
    # Every selected tensor moved (Adam moves anything with a gradient by ~lr per step).
    moved = [n for n in names if not torch.equal(edited.tensors[n], before[n])]
    assert len(moved) == len(names)
    # Applying the weights changes exactly those tensors of the UNet.
    edited.apply(tiny_pipe)
    after = tiny_pipe.unet.state_dict()
    assert {n for n in before if not torch.equal(before[n], after[n])} == set(names)


def parameter_names(pipe, variant, rules="2023"):
    adapter = erasure.adapters.adapter_for(pipe)
    config = ESDConfig(variant=variant, parameter_rules=rules)
    return esd.trainable_parameter_names(adapter.unet, set(adapter.cross_attention_modules()), config)


def test_variants_select_by_module_name(tiny_pipe):
    every = [name for name, _ in tiny_pipe.unet.named_parameters()]
    cross = parameter_names(tiny_pipe, "esd-x")
    strict = parameter_names(tiny_pipe, "esd-x-strict")
    unet_only = parameter_names(tiny_pipe, "esd-u")
    assert cross == [n for n in every if ".attn2." in n]
    assert strict == [n for n in every if ".attn2.to_k." in n or ".attn2.to_v." in n]
    assert parameter_names(tiny_pipe, "esd-all") == every
    # 2023 code's esd-u: not cross-attention, not the time embedding or output head;
    # conv_in and the norms train.
    assert not {n for n in unet_only if ".attn2." in n}
    assert not [n for n in unet_only if n.startswith(("time_embedding.", "add_embedding.", "conv_out.", "conv_norm_out."))]
    assert "conv_in.weight" in unet_only and any("norm" in n for n in unet_only)
    assert set(unet_only) | set(cross) | {n for n in every if n.split(".")[0] in esd.EMBEDDING_MODULES + esd.OUTPUT_MODULES} == set(every)


def test_2025_rules_train_linear_and_conv_layers_only(sd1_pipe):
    unet_only = parameter_names(sd1_pipe, "esd-u", rules="2025")
    assert "time_embedding.linear_1.weight" in unet_only and "conv_out.weight" in unet_only
    assert not [n for n in unet_only if "norm" in n or ".attn2." in n]
    assert parameter_names(sd1_pipe, "esd-x", rules="2025") == parameter_names(sd1_pipe, "esd-x")


# ---- the objective ---------------------------------------------------------------


class FakeAdapter:
    """predict_noise returns the first hidden value of each prompt: eps(prompt) is a known number."""

    def predict_noise(self, latents, timestep, cond, uncond=None, guidance_scale=1.0):
        return cond.hidden[:, 0, 0].view(-1, 1, 1, 1).expand_as(latents).clone()


def constant_prompts(concept, anchor, trained):
    def emb(value):
        return erasure.adapters.PromptEmbeddings(torch.full((1, 2, 1), float(value)), torch.tensor([2]))

    return esd.Prompts(concept=emb(concept), anchor=emb(anchor), trained=emb(trained), empty=emb(0))


@pytest.mark.parametrize(
    "options, expected",
    [
        (dict(), 1.0 - 2.0 * (5.0 - 1.0)),  # paper: eps("") - eta (eps(c) - eps(""))
        (dict(target_base="prompt"), 5.0 - 2.0 * (5.0 - 1.0)),  # 2025 code
        (dict(erase_from="a painting"), 7.0 - 2.0 * (5.0 - 1.0)),  # eps(from) - eta (eps(c) - eps(""))
    ],
)
def test_negative_guidance_target(options, expected):
    trained = 7.0 if "erase_from" in options else 5.0
    prompts = constant_prompts(concept=5.0, anchor=1.0, trained=trained)
    config = ESDConfig(negative_guidance=2.0, **options)
    target = esd.negative_guidance_target(FakeAdapter(), torch.zeros(1, 4, 2, 2), 0, prompts, torch.tensor([0]), config)
    assert torch.allclose(target, torch.full_like(target, expected))


def test_the_loss_falls_on_a_fixed_seed(sd1_pipe):
    # One DDIM step: x_t is pure noise at the top timestep, so iterations differ only by noise.
    config = ESDConfig(variant="esd-x", iterations=20, ddim_steps=1, lr=1e-3, batch_size=4, seed=1)
    losses = esd.erase(sd1_pipe, [Concept("a red circle")], config).extra["losses"]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.4 * first, (first, last)


def test_frozen_swaps_in_the_original_values(sd1_pipe):
    names = parameter_names(sd1_pipe, "esd-x")
    subset = esd.TrainedSubset(sd1_pipe.unet, names)
    with torch.no_grad():
        for param in subset.params.values():
            param.add_(1.0)
    with subset.frozen():
        assert all(torch.equal(p, subset.original[n]) for n, p in subset.params.items())
    assert all(torch.equal(p, subset.original[n] + 1.0) for n, p in subset.params.items())
    trained = subset.take_trained()
    assert all(torch.equal(p, subset.original[n]) for n, p in subset.params.items())
    assert all(torch.equal(trained[n], subset.original[n] + 1.0) for n in names)


# ---- several concepts, mapping, erase_from, configs --------------------------------


def test_several_concepts_a_mapping_and_erase_from_run():
    from erasure.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sdxl")  # the family with pooled embeddings and added conditioning
    before = snapshot(pipe)
    concepts = [Concept("circle"), Concept("star", "square")]
    edited = esd.erase(pipe, concepts, ESDConfig(erase_from="a drawing", batch_size=2, **FAST))
    assert_unchanged(pipe, before)
    assert edited.concepts == ["circle", "star->square"] and len(edited.extra["losses"]) == 3


def test_concept_types_pick_the_papers_variants(sd1_pipe):
    objects = erasure.resolve_config("esd", "object")
    styles = erasure.resolve_config("esd", "style")
    assert (objects.variant, styles.variant) == ("esd-u", "esd-x")
    assert (objects.iterations, objects.lr, objects.negative_guidance, objects.start_guidance) == (1000, 1e-5, 1.0, 3.0)
    fast = erasure.resolve_config("esd", "style", config=erasure.config.configs_dir() / "esd" / "fast.yaml")
    assert (fast.iterations, fast.lr, fast.negative_guidance, fast.sample_from) == (200, 5e-5, 2.0, "frozen")
    assert fast.variant == "esd-x"


def test_weights_round_trip_through_a_file(sd1_pipe, tmp_path):
    edited = erasure.erase(sd1_pipe, "esd", "circle", concept_type="style", **FAST)
    path = edited.save(tmp_path / "circle.safetensors")
    loaded = erasure.EditedWeights.load(path)
    assert loaded.method == "esd" and loaded.extra["parameters"] == edited.extra["parameters"]
    loaded.apply(sd1_pipe)
    params = dict(sd1_pipe.unet.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in edited.tensors.items())


# ---- long runs: checkpoints, resume, interrupt, NaN --------------------------------


def interrupt_on_call(monkeypatch, call: int):
    """Send Ctrl-C (SIGINT) to ourselves during the ``call``-th training step."""
    real, calls = esd.training_step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(esd, "training_step", step)


def test_resume_after_ctrl_c_is_bit_identical(monkeypatch, tmp_path):
    from erasure.tiny import build_tiny_pipeline

    config = dict(variant="esd-u", iterations=6, ddim_steps=3, lr=1e-3, batch_size=2, seed=3)
    reference = esd.erase(build_tiny_pipeline("sd1"), [Concept("circle"), Concept("star")], ESDConfig(**config))

    pipe = build_tiny_pipeline("sd1")
    before = snapshot(pipe)
    interrupt_on_call(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        esd.erase(pipe, [Concept("circle"), Concept("star")], ESDConfig(checkpoint_dir=str(tmp_path), **config))
    assert_unchanged(pipe, before)
    index = json.loads((tmp_path / esd.CHECKPOINT_INDEX).read_text())
    assert index["iteration"] == 3  # the interrupted iteration finished, then the checkpoint was written

    monkeypatch.undo()
    resumed = esd.erase(
        pipe, [Concept("circle"), Concept("star")], ESDConfig(checkpoint_dir=str(tmp_path), resume=True, **config)
    )
    assert resumed.extra["losses"] == reference.extra["losses"]
    assert all(torch.equal(resumed.tensors[n], reference.tensors[n]) for n in reference.tensors)


def test_periodic_checkpoints_and_resume_checks(sd1_pipe, tmp_path):
    config = dict(iterations=4, ddim_steps=2, lr=1e-3, checkpoint_every=2, checkpoint_dir=str(tmp_path))
    esd.erase(sd1_pipe, [Concept("circle")], ESDConfig(**config))
    assert json.loads((tmp_path / esd.CHECKPOINT_INDEX).read_text())["iteration"] == 4
    assert len(list(tmp_path.glob("esd-state-*.safetensors"))) == 1  # older states are removed
    with pytest.raises(ErasureError, match="lr: 0.001 -> 0.01"):
        esd.erase(sd1_pipe, [Concept("circle")], ESDConfig(**{**config, "lr": 1e-2}, resume=True))
    with pytest.raises(ErasureError, match="erases"):
        esd.erase(sd1_pipe, [Concept("star")], ESDConfig(**config, resume=True))
    # More iterations continue the same run.
    longer = esd.erase(sd1_pipe, [Concept("circle")], ESDConfig(**{**config, "iterations": 6}, resume=True))
    assert len(longer.extra["losses"]) == 6
    with pytest.raises(ErasureError, match="no ESD checkpoint"):
        esd.erase(sd1_pipe, [Concept("circle")], ESDConfig(checkpoint_dir=str(tmp_path / "none"), resume=True))


def test_a_non_finite_loss_stops_and_keeps_the_last_good_state(sd1_pipe, monkeypatch, tmp_path):
    real, calls = esd.esd_loss, {"n": 0}

    def loss(prediction, target):
        calls["n"] += 1
        value = real(prediction, target)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(esd, "esd_loss", loss)
    before = snapshot(sd1_pipe)
    with pytest.raises(ErasureError, match="loss became nan at iteration 3"):
        esd.erase(sd1_pipe, [Concept("circle")], ESDConfig(checkpoint_dir=str(tmp_path), **FAST))
    assert_unchanged(sd1_pipe, before)
    index = json.loads((tmp_path / esd.CHECKPOINT_INDEX).read_text())
    assert index["iteration"] == 2 and all(map(lambda x: x == x, index["losses"]))


def test_bad_input_is_refused(sd1_pipe):
    with pytest.raises(ErasureError, match="iterations"):
        esd.erase(sd1_pipe, [Concept("circle")], ESDConfig(iterations=0))
    with pytest.raises(ErasureError, match="erase_from"):
        esd.erase(sd1_pipe, [Concept("circle")], ESDConfig(erase_from=" "))
    with pytest.raises(ErasureError, match="float32"):
        esd.erase(sd1_pipe.to(torch.float16), [Concept("circle")], ESDConfig(**FAST))


def test_frozen_phases_under_autocast_use_the_original_weights():
    """Autocast caches weight casts per tensor; a swap inside one autocast region would
    reuse the edited weights for the frozen predictions."""
    from erasure.tiny import build_tiny_pipeline

    pipe, reference = build_tiny_pipeline("sd1"), build_tiny_pipeline("sd1")
    adapter = erasure.adapters.adapter_for(pipe)
    subset = esd.TrainedSubset(pipe.unet, parameter_names(pipe, "esd-all"))
    with torch.no_grad():
        for param in subset.params.values():
            param.mul_(1.5)
    config = ESDConfig(mixed_precision="bf16")
    latents, cond = torch.randn(1, 4, 8, 8), adapter.encode(["a red circle"])

    def predict(adapter_):
        return adapter_.predict_noise(latents, 500, cond)

    with torch.no_grad():
        with esd.model_phase(subset, adapter, config, frozen=False):
            edited = predict(adapter)
        with esd.model_phase(subset, adapter, config, frozen=True):
            frozen = predict(adapter)
        with esd.autocast(adapter, config):
            original = predict(erasure.adapters.adapter_for(reference))
    assert torch.equal(frozen, original) and not torch.allclose(edited, original)
