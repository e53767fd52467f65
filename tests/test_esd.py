"""ESD on the tiny pipelines: which tensors train, the objective, resume, failure modes."""

from __future__ import annotations

import copy
import dataclasses
import json
import signal

import pytest
import torch

import erasure
from erasure.concepts import Concept
from erasure.errors import ErasureError
from erasure.methods import esd
from erasure.methods.esd import ESDConfig
from erasure.training import CHECKPOINT_INDEX, RunOptions
from erasure.trajectories import sample_until

# A few iterations over a 2-step DDIM schedule keep each run to about a second.
FAST = dict(iterations=3, ddim_steps=2, lr=1e-3)


def snapshot(pipe) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in pipe.unet.state_dict().items()}


def assert_unchanged(pipe, before):
    after = pipe.unet.state_dict()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert not changed, f"erase() left the pipeline edited: {changed[:3]}"


# ---- which parameters train ------------------------------------------------------


def run_esd(pipe, concepts, config: ESDConfig, run: RunOptions | None = None) -> erasure.EditedWeights:
    return erasure.methods.METHODS["esd"].run(pipe, [Concept(*c.split("->")) for c in concepts], config, run)


@pytest.mark.parametrize("variant", ["esd-x", "esd-u"])
def test_only_the_selected_subset_changes(tiny_pipe, variant):
    before = snapshot(tiny_pipe)
    edited = run_esd(tiny_pipe, ["a red circle"], ESDConfig(variant=variant, **FAST))
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

    return esd.Prompts(concept=emb(concept), anchor=emb(anchor), trained=emb(trained), empty=emb(0), anchors_empty=False)


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
    losses = run_esd(sd1_pipe, ["a red circle"], config).extra["losses"]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.4 * first, (first, last)


# ---- several concepts, mapping, erase_from, configs --------------------------------


def test_several_concepts_a_mapping_and_erase_from_run():
    from erasure.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sdxl")  # the family with pooled embeddings and added conditioning
    before = snapshot(pipe)
    edited = run_esd(pipe, ["circle", "star->square"], ESDConfig(erase_from="a drawing", batch_size=2, **FAST))
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

    config = ESDConfig(variant="esd-u", iterations=6, ddim_steps=3, lr=1e-3, batch_size=2, seed=3)
    concepts = ["circle", "star"]
    reference = run_esd(build_tiny_pipeline("sd1"), concepts, config)

    pipe = build_tiny_pipeline("sd1")
    before = snapshot(pipe)
    interrupt_on_call(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run_esd(pipe, concepts, config, RunOptions(checkpoint_dir=tmp_path))
    assert_unchanged(pipe, before)
    index = json.loads((tmp_path / CHECKPOINT_INDEX).read_text())
    assert index["step"] == 3  # the interrupted iteration finished, then the checkpoint was written

    monkeypatch.undo()
    resumed = run_esd(pipe, concepts, config, RunOptions(checkpoint_dir=tmp_path, resume=True))
    assert resumed.extra["losses"] == reference.extra["losses"]
    assert all(torch.equal(resumed.tensors[n], reference.tensors[n]) for n in reference.tensors)


def test_checkpoints_belong_to_one_run(sd1_pipe, tmp_path):
    config = ESDConfig(iterations=4, ddim_steps=2, lr=1e-3)
    run = RunOptions(checkpoint_dir=tmp_path, checkpoint_every=2)
    first = run_esd(sd1_pipe, ["circle"], config, run)
    assert json.loads((tmp_path / CHECKPOINT_INDEX).read_text())["step"] == 4
    assert len(list(tmp_path.glob("state-*.safetensors"))) == 1  # older states are removed
    # Another run into the same folder is refused before it starts, whatever its settings...
    with pytest.raises(ErasureError, match="earlier run: pass --resume"):
        run_esd(sd1_pipe, ["star"], config, run)
    # ...resuming it needs the same settings and concepts...
    resume = RunOptions(checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ErasureError, match="lr: 0.001 -> 0.01"):
        run_esd(sd1_pipe, ["circle"], ESDConfig(iterations=4, ddim_steps=2, lr=1e-2), resume)
    with pytest.raises(ErasureError, match=r"concepts: \['circle'\] -> \['star'\]"):
        run_esd(sd1_pipe, ["star"], config, resume)
    # ...and more iterations continue the same run.
    longer = run_esd(sd1_pipe, ["circle"], ESDConfig(iterations=6, ddim_steps=2, lr=1e-3), resume)
    assert longer.extra["losses"][:4] == first.extra["losses"] and len(longer.extra["losses"]) == 6
    # Overwrite starts afresh: the same weights as the first run.
    fresh = run_esd(sd1_pipe, ["circle"], config, RunOptions(checkpoint_dir=tmp_path, overwrite=True))
    assert all(torch.equal(fresh.tensors[n], first.tensors[n]) for n in first.tensors)
    assert not (tmp_path / CHECKPOINT_INDEX).exists()
    with pytest.raises(ErasureError, match="no checkpoint in"):
        run_esd(sd1_pipe, ["circle"], config, RunOptions(checkpoint_dir=tmp_path / "none", resume=True))


def test_the_command_line_checkpoints_next_to_the_output(tiny_pipeline_folder, tmp_path, capsys):
    from erasure.cli import main

    output = tmp_path / "circle.safetensors"
    folder = output.with_suffix(".checkpoint")
    pipe = erasure.load_pipeline(str(tiny_pipeline_folder), device="cpu", dtype="float32")
    settings = dict(iterations=2, ddim_steps=2, lr=1e-3)
    # An earlier, unfinished run of the same command left its checkpoint there.
    interrupted = erasure.erase(pipe, "esd", "circle", run=RunOptions(checkpoint_dir=folder, checkpoint_every=1), **settings)
    command = ["--method", "esd", "--concepts", "circle", "--model", str(tiny_pipeline_folder), "--output", str(output),
               "--set", "iterations=3", "--set", "ddim_steps=2", "--set", "lr=1e-3"]
    capsys.readouterr()
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert "--resume" in err and "--overwrite" in err and len(err.splitlines()) == 1 and not output.exists()
    assert main(command + ["--resume"]) == 0
    resumed = erasure.EditedWeights.load(output)
    assert resumed.extra["losses"][:2] == interrupted.extra["losses"] and len(resumed.extra["losses"]) == 3
    assert main(["--method", "esd", "--concepts", "circle", "--model", str(tiny_pipeline_folder),
                 "--output", str(tmp_path / "other.safetensors"), "--resume"]) == 2
    assert "no checkpoint in" in capsys.readouterr().err


def test_a_non_finite_loss_stops_and_keeps_the_last_good_state(sd1_pipe, monkeypatch, tmp_path):
    real, calls = esd.esd_loss, {"n": 0}

    def loss(prediction, target):
        calls["n"] += 1
        value = real(prediction, target)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(esd, "esd_loss", loss)
    before = snapshot(sd1_pipe)
    cause = "loss became nan at iteration 3, so training stopped; the trained weights diverged: lower lr"
    with pytest.raises(ErasureError, match=cause):
        run_esd(sd1_pipe, ["circle"], ESDConfig(**FAST), RunOptions(checkpoint_dir=tmp_path))
    assert_unchanged(sd1_pipe, before)
    index = json.loads((tmp_path / CHECKPOINT_INDEX).read_text())
    assert index["step"] == 2 and all(map(lambda x: x == x, index["history"]))


def test_a_non_finite_loss_from_the_guidance_names_the_guidance(sd1_pipe, tmp_path):
    # A huge eta makes the target overflow float32 in the loss; the learning rate is innocent.
    cause = r"at iteration 1.*the target is too large: lower negative_guidance \(now 1e\+30\)"
    with pytest.raises(ErasureError, match=cause) as raised:
        run_esd(sd1_pipe, ["circle"], ESDConfig(negative_guidance=1e30, **FAST), RunOptions(checkpoint_dir=tmp_path))
    assert "lower lr" not in str(raised.value)


def test_bad_input_is_refused(sd1_pipe):
    with pytest.raises(ErasureError, match="iterations"):
        run_esd(sd1_pipe, ["circle"], ESDConfig(iterations=0))
    with pytest.raises(ErasureError, match="erase_from"):
        run_esd(sd1_pipe, ["circle"], ESDConfig(erase_from=" "))
    with pytest.raises(ErasureError, match="float32"):
        run_esd(sd1_pipe.to(torch.float16), ["circle"], ESDConfig(**FAST))
    with pytest.raises(ErasureError, match="DDIM schedule of 2000 steps"):
        run_esd(sd1_pipe.to(torch.float32), ["circle"], ESDConfig(**{**FAST, "ddim_steps": 2000}))


def test_frozen_phases_under_autocast_use_the_original_weights():
    """Autocast caches weight casts per tensor; a swap inside one autocast region would
    reuse the edited weights for the frozen predictions."""
    from erasure.tiny import build_tiny_pipeline

    from erasure.training import swapped_parameters

    pipe, reference = build_tiny_pipeline("sd1"), build_tiny_pipeline("sd1")
    adapter = erasure.adapters.adapter_for(pipe)
    original = {name: p.detach() for name, p in pipe.unet.named_parameters()}
    edited = {name: value * 1.5 for name, value in original.items()}
    config = ESDConfig(mixed_precision="bf16")
    latents, cond = torch.randn(1, 4, 8, 8), adapter.encode(["a red circle"])

    def predict(adapter_):
        return adapter_.predict_noise(latents, 500, cond)

    with torch.no_grad(), swapped_parameters(pipe.unet, edited):
        with esd.model_phase(adapter, config, None):
            edited_prediction = predict(adapter)
        with esd.model_phase(adapter, config, original):
            frozen = predict(adapter)
    with torch.no_grad(), esd.autocast(adapter, config):
        expected = predict(erasure.adapters.adapter_for(reference))
    assert torch.equal(frozen, expected) and not torch.allclose(edited_prediction, expected)


# ---- the trajectory bank -------------------------------------------------------


def papers_loop(pipe, concept: str, config: ESDConfig) -> dict[str, torch.Tensor]:
    """The paper's ESD written out with plain diffusers calls: two UNets, fresh x_t every
    iteration, the same random draws (concept row, DDIM step, noise) from one generator.
    With ``timestep_scheme="compvis-2023"``, the 2023 code's sampler and scoring: the
    first DDIM timestep skipped, ``min(n - t_enc, n - 1)`` steps, scored at a DDPM step
    drawn from the ``t_enc``-th of ``n`` buckets."""
    from diffusers import DDIMScheduler

    frozen, edited = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.unet)
    names = parameter_names(pipe, config.variant)
    edited.requires_grad_(False)
    params = [p for n, p in edited.named_parameters() if n in names]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=config.lr)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(config.ddim_steps)
    with torch.no_grad():
        cond, empty = (pipe.encode_prompt([text], "cpu", 1, False)[0] for text in (concept, ""))
    both = torch.cat([empty, cond])
    generator = torch.Generator().manual_seed(config.seed)
    size = pipe.unet.config.sample_size
    for _ in range(config.iterations):
        torch.randint(1, (1,), generator=generator)  # the concept row: one concept
        step = int(torch.randint(config.ddim_steps, (1,), generator=generator))
        n = config.ddim_steps
        if config.timestep_scheme == "compvis-2023":
            scored = torch.randint(round(step * 1000 / n), round((step + 1) * 1000 / n), (1,), generator=generator)[0]
            walked = scheduler.timesteps[1 : 1 + min(n - step, n - 1)]
        else:
            scored, walked = scheduler.timesteps[step], scheduler.timesteps[:step]
        x = torch.randn((1, 4, size, size), generator=generator) * scheduler.init_noise_sigma
        with torch.no_grad():
            for t in walked:
                uncond, text = edited(torch.cat([x, x]), t, encoder_hidden_states=both).sample.chunk(2)
                x = scheduler.step(uncond + config.start_guidance * (text - uncond), t, x, eta=0.0).prev_sample
            t = scored
            e0, ep = frozen(torch.cat([x, x]), t, encoder_hidden_states=both).sample.chunk(2)
            target = e0 - config.negative_guidance * (ep - e0)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(edited(x, t, encoder_hidden_states=cond).sample, target)
        loss.backward()
        optimizer.step()
    return {n: p.detach() for n, p in edited.named_parameters() if n in names}


def test_without_a_bank_esd_is_the_papers_loop_bit_for_bit(sd1_pipe):
    config = ESDConfig(variant="esd-x", iterations=4, ddim_steps=5, lr=1e-3, seed=2)  # refresh_every=1
    expected = papers_loop(sd1_pipe, "a red circle", config)
    edited = run_esd(sd1_pipe, ["a red circle"], config)
    assert edited.tensors.keys() == expected.keys()
    assert all(torch.equal(edited.tensors[n], expected[n]) for n in expected)
    base = dict(sd1_pipe.unet.named_parameters())
    assert all(not torch.equal(expected[n], base[n]) for n in expected)  # it trained


def test_the_compvis_2023_scheme_is_the_2023_codes_loop_bit_for_bit(sd1_pipe):
    config = ESDConfig(variant="esd-x", iterations=4, ddim_steps=5, lr=1e-3, seed=3, timestep_scheme="compvis-2023")
    expected = papers_loop(sd1_pipe, "a red circle", config)
    edited = run_esd(sd1_pipe, ["a red circle"], config)
    assert all(torch.equal(edited.tensors[n], expected[n]) for n in expected)
    aligned = run_esd(sd1_pipe, ["a red circle"], dataclasses.replace(config, timestep_scheme="aligned"))
    assert not any(torch.equal(aligned.tensors[n], expected[n]) for n in expected)


def test_the_compvis_2023_latent_is_39_to_58_steps_below_where_it_is_scored(sd1_pipe):
    """On SD's 50-step schedule (981, 961, ..., 1) the 2023 code's x_t for t_enc >= 2 is at
    level 20 t_enc - 39 and is scored in [20 t_enc, 20 t_enc + 19]."""
    adapter = erasure.adapters.adapter_for(sd1_pipe)
    scheduler = adapter.ddim_scheduler(50)
    assert scheduler.timesteps[0] == 981 and scheduler.timesteps[-1] == 1
    generator = torch.Generator().manual_seed(0)
    for t_enc in range(2, 50):
        start, steps, scored = esd.compvis_2023_schedule(scheduler, t_enc, 50, generator)
        level = scheduler.timesteps[start + steps] if start + steps < 50 else 0
        assert level == 20 * t_enc - 39 and 20 * t_enc <= scored <= 20 * t_enc + 19
    assert esd.compvis_2023_schedule(scheduler, 0, 50, generator)[:2] == (1, 49)  # all the way to x_0
    with pytest.raises(ErasureError, match="refresh_every=1"):
        ESDConfig(timestep_scheme="compvis-2023", refresh_every=10)


def test_pure_bf16_keeps_weights_in_bf16_where_autocast_moves_every_weight(sd1_pipe):
    """The 2025 code's precision: an Adam update below a weight's bfloat16 spacing is lost."""
    before = snapshot(sd1_pipe)
    config = dict(variant="esd-x", parameter_rules="2025", iterations=10, ddim_steps=4, lr=5e-5)
    pure = run_esd(sd1_pipe, ["circle"], ESDConfig(**config, mixed_precision="bf16-pure")).tensors
    autocast = run_esd(sd1_pipe, ["circle"], ESDConfig(**config, mixed_precision="bf16")).tensors
    assert_unchanged(sd1_pipe, before)

    def moved(tensors, reference):
        changed = sum(int((tensors[n].float() != reference[n].float()).sum()) for n in tensors)
        return changed / sum(t.numel() for t in tensors.values())

    assert all(torch.equal(t.float(), t.to(torch.bfloat16).float()) for t in pure.values())
    assert moved(autocast, before) > 0.99
    assert 0 < moved(pure, {n: before[n].to(torch.bfloat16) for n in pure}) < 0.5


@pytest.mark.parametrize(
    "concepts, erase_from, sample_from",
    [(["circle", "star"], None, "frozen"), (["circle", "star->square"], "a drawing", "frozen"), (["circle"], None, "edited")],
)
def test_a_bank_holds_the_fresh_latents_and_targets(concepts, erase_from, sample_from):
    """Every latent of the bank is what sampling that far from the same noise gives, and
    a frozen bank's target there is the one computed afresh (float64: exact to rounding)."""
    from erasure.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd1").to(torch.float64)
    adapter = erasure.adapters.adapter_for(pipe)
    config = ESDConfig(ddim_steps=6, sample_from=sample_from, erase_from=erase_from, bank_size=3, negative_guidance=2.0)
    prompts = esd.Prompts.encode(adapter, [Concept(*c.split("->")) for c in concepts], erase_from)
    scheduler = adapter.ddim_scheduler(config.ddim_steps)
    generator = torch.Generator().manual_seed(5)
    bank = esd.sample_bank(adapter, {}, prompts, scheduler, config, generator.clone_state())
    rows = torch.randint(len(concepts), (3,), generator=generator)
    noise = esd.starting_noise(adapter, config, 3, generator)
    assert torch.equal(bank.rows, rows) and bank.latents.shape[:2] == (6, 3)
    with torch.no_grad():
        for step in range(6):
            x_t = sample_until(adapter, scheduler, noise, step, prompts.trained.select(rows), prompts.empty, config.start_guidance)
            assert torch.allclose(bank.latents[step], x_t, rtol=0, atol=1e-10)
            if sample_from == "frozen":
                target = esd.negative_guidance_target(adapter, x_t, scheduler.timesteps[step], prompts, rows, config)
                assert torch.allclose(bank.values[step], target, rtol=0, atol=1e-10)
    assert (bank.values is None) == (sample_from == "edited")


def count_unet_calls(monkeypatch) -> dict:
    calls = {"n": 0}
    real = erasure.adapters.StableDiffusionAdapter._unet

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(erasure.adapters.StableDiffusionAdapter, "_unet", counted)
    return calls


@pytest.mark.parametrize("sample_from", ["edited", "frozen"])
def test_the_bank_is_sampled_every_k_iterations_and_then_drawn_from(sd1_pipe, monkeypatch, sample_from):
    config = ESDConfig(iterations=7, ddim_steps=5, lr=1e-3, sample_from=sample_from, refresh_every=3, bank_size=4)
    calls = count_unet_calls(monkeypatch)
    edited = run_esd(sd1_pipe, ["circle"], config)
    assert len(edited.extra["losses"]) == 7
    banks = 3  # at iterations 0, 3 and 6
    if sample_from == "frozen":
        # A bank: one call per latent gives the step and the target; an iteration: the edited prediction.
        assert calls["n"] == banks * 5 + 7
    else:
        # A bank: a call per step but the last; an iteration: the frozen target and the edited prediction.
        assert calls["n"] == banks * 4 + 2 * 7


@pytest.mark.parametrize("sample_from, interrupted_at", [("edited", 5), ("frozen", 4)])
def test_resume_with_a_bank_is_bit_identical(monkeypatch, tmp_path, sample_from, interrupted_at):
    """Interrupted between refreshes, the run continues with the bank it was drawing from."""
    from erasure.tiny import build_tiny_pipeline

    config = ESDConfig(variant="esd-u", iterations=8, ddim_steps=4, lr=1e-3, batch_size=2, seed=3,
                       sample_from=sample_from, refresh_every=3, bank_size=3)
    reference = run_esd(build_tiny_pipeline("sd1"), ["circle", "star"], config)
    pipe = build_tiny_pipeline("sd1")
    interrupt_on_call(monkeypatch, interrupted_at)
    with pytest.raises(KeyboardInterrupt):
        run_esd(pipe, ["circle", "star"], config, RunOptions(checkpoint_dir=tmp_path))
    assert json.loads((tmp_path / CHECKPOINT_INDEX).read_text())["step"] % 3 != 0  # mid-bank
    monkeypatch.undo()
    resumed = run_esd(pipe, ["circle", "star"], config, RunOptions(checkpoint_dir=tmp_path, resume=True))
    assert resumed.extra["losses"] == reference.extra["losses"]
    assert all(torch.equal(resumed.tensors[n], reference.tensors[n]) for n in reference.tensors)


def test_a_checkpoint_without_its_bank_is_refused(monkeypatch, tmp_path, sd1_pipe):
    from safetensors.torch import load_file, save_file

    config = ESDConfig(iterations=4, ddim_steps=3, lr=1e-3, refresh_every=3, bank_size=2)
    interrupt_on_call(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_esd(sd1_pipe, ["circle"], config, RunOptions(checkpoint_dir=tmp_path))
    monkeypatch.undo()
    state_file = next(tmp_path.glob("state-*.safetensors"))
    stored = load_file(state_file)
    save_file({k: v for k, v in stored.items() if not k.startswith("tensor/bank/")}, state_file)
    with pytest.raises(ErasureError, match="no trajectory bank"):
        run_esd(sd1_pipe, ["circle"], config, RunOptions(checkpoint_dir=tmp_path, resume=True))
