"""The attacks package (``erasure.attacks``) and the evaluator's attacked variants.

On the tiny SD 1.x, 2.x and SDXL pipelines: token ids composed for an attack are the
ids its prompt text tokenises to; injected token vectors reach the encoder only inside
the block; every attack runs on every family and gives the same result for the same
seed; rows attacked in a batch get what they get alone; a replayed ``attacks/<name>.csv``
makes the same images; bad input is one line and writes nothing. On the bundled mini-sd:
each attack's objective is lower for what it found than where it started.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import erasure
from erasure.adapters import adapter_for
from erasure.attacks import ATTACKS, AttackTarget, BaseView, build_attack
from erasure.attacks.concept_inversion import encode_with_token
from erasure.attacks.tokens import adversarial_prompt, candidate_ids, compose_ids, injected_tokens, safe_token_ids, words_of
from erasure.attacks.unlearndiffatk import project_to_simplex
from erasure.errors import ErasureError
from erasure.eval import evaluate
from erasure.eval import generate as gen
from erasure.eval.cli import main
from erasure.eval.prompts import PromptRow, load_prompt_set
from erasure.generation import generation_settings
from erasure.tiny import build_tiny_pipeline

from eval_fixtures import STEPS, erased_file  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")

ASSETS = Path(erasure.__file__).parent / "assets"
MINI_SD = (ASSETS / "mini-sd" / "model_index.json").is_file()
WORDS = ["red", "blue", "circle", "square", "dog", "photo"]
# Each attack at a size a test can afford.
SMALL = {
    "closed-form": {},
    "unlearndiffatk": {"timesteps": 2, "steps_per_timestep": 3, "vocabulary": WORDS},
    "ring-a-bell": {"population": 8, "generations": 4, "length": 4, "vocabulary": WORDS},
    "concept-inversion": {"steps": 3, "num_images": 2, "batch_size": 2, "grad_accumulation": 1},
}
ROWS = [PromptRow(0, "a red circle", 5, label="circle", type="erased"),
        PromptRow(1, "a blue disk", 6, label="circle", type="synonym")]


def _target(pipe, judge=None) -> AttackTarget:
    settings = generation_settings(pipe, num_inference_steps=2, resolution=32, batch_size=4)
    return AttackTarget(pipe, settings, BaseView(pipe), ["circle"], judge=judge)


def _same(a, b) -> bool:
    if a.embedding is not None:
        return torch.equal(a.embedding.hidden, b.embedding.hidden)
    if a.tokens is not None:
        return all(torch.equal(a.tokens[k], b.tokens[k]) for k in a.tokens) and a.prompt == b.prompt
    return a.prompt == b.prompt


ATTACKS_DIR = Path(erasure.__file__).parent / "attacks"


@pytest.mark.parametrize("path", sorted(ATTACKS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_attacks_import_neither_the_evaluator_nor_the_world(path):
    """Dependency direction: the attacks are core; the evaluator passes the judge and images in."""
    from test_methods_contract import imported_modules

    imported = imported_modules(path)
    assert not [m for m in imported if m.startswith(("erasure.eval", "erasure.world"))], imported
    assert any(m.startswith("erasure.") for m in imported)


# ---- token machinery ----


@pytest.mark.parametrize("pad", ["<|endoftext|>", "!"])
def test_adversarial_prompts_tokenise_back_to_the_ids_found(pad):
    from erasure.tokenizer import clip_tokenizer

    tokenizer = clip_tokenizer(pad_token=pad)
    safe = safe_token_ids(tokenizer)
    assert 34_000 < len(safe) < 34_483  # word-final ids (34,483) less those that do not re-encode alone
    assert not set(tokenizer.all_special_ids) & set(safe.tolist())
    pipe = build_tiny_pipeline("sd2" if pad == "!" else "sd1")
    adapter = adapter_for(pipe)
    rng = np.random.default_rng(0)
    for _ in range(50):
        ids = safe[torch.from_numpy(rng.integers(len(safe), size=16))]
        prompt = "a photo of a red circle"
        composed, slots = compose_ids(adapter, [[ids, prompt]])
        retokenised = adapter.tokenize([adversarial_prompt(words_of(adapter, ids), prompt)])
        assert torch.equal(composed[0], retokenised[0])
        assert slots[0, 1:17].all() and slots.sum() == 16


def test_the_trained_vocabulary_is_mini_sds_words():
    listed = json.loads((ASSETS / "mini-sd" / "trained_token_ids.json").read_text())["ids"]
    assert len(listed) == 68  # mini-clip's metrics.json: trained_token_rows
    assert json.loads((ASSETS / "mini-clip" / "metrics.json").read_text())["text_phase"]["trained_token_rows"] == 68
    adapter = adapter_for(build_tiny_pipeline("sd1"))
    ids, description = candidate_ids(adapter, "trained", ASSETS / "mini-sd")
    assert {"circle", "disk", "red", "violet", "hollow"} <= set(words_of(adapter, ids))
    assert len(ids) == 64 and "64 of 68" in description  # start, end, "pent" and "out" are not word-final


def test_unknown_or_multi_token_vocabulary_words_are_refused():
    adapter = adapter_for(build_tiny_pipeline("sd1"))
    with pytest.raises(ErasureError, match="'pentagram' is not one round-trip-safe token"):
        candidate_ids(adapter, ["red", "pentagram"], None)
    with pytest.raises(ErasureError, match="vocabulary 'trained' needs the model folder's trained_token_ids.json"):
        candidate_ids(adapter, "trained", None)


def test_injected_vectors_change_only_their_positions_and_only_inside_the_block(tiny_pipe):
    adapter = adapter_for(tiny_pipe)
    word = torch.tensor(adapter.concept_token_ids("circle"))
    ids, slots = compose_ids(adapter, [["a red", word], ["a", word, "in the sky"]])
    tables = adapter.token_embeddings()
    plain = adapter.encode_ids(ids)
    assert torch.equal(plain.hidden, adapter.encode(["a red circle", "a circle in the sky"]).hidden)
    same = [table.weight.detach()[word].expand(2, -1) for table in tables]
    with injected_tokens(adapter, slots, same):
        assert torch.equal(adapter.encode_ids(ids).hidden, plain.hidden)  # the table's own vectors: no change
    moved = [v.clone().requires_grad_(True) for v in (t.weight.detach()[[320, 320]] for t in tables)]
    with injected_tokens(adapter, slots, moved):
        changed = adapter.encode_ids(ids)
    position = int(slots[0].nonzero()[0])
    assert torch.equal(changed.hidden[0, :position], plain.hidden[0, :position])  # causal: earlier tokens untouched
    assert not torch.allclose(changed.hidden[0, position], plain.hidden[0, position])
    changed.hidden.sum().backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in moved)
    assert torch.equal(adapter.encode_ids(ids).hidden, plain.hidden)  # hook removed


def test_a_prefix_of_token_vectors_encodes_as_the_prompt_its_tokens_spell(tiny_pipe):
    from erasure.attacks.tokens import encode_with_prefix

    adapter = adapter_for(tiny_pipe)
    ids = torch.tensor([adapter.concept_token_ids(w) for w in ("red", "dog", "photo")]).T.repeat(2, 1)  # (2, 3)
    vectors = [table.weight.detach()[ids] for table in adapter.token_embeddings()]
    prompts = ["a circle", "a blue disk"]
    found = encode_with_prefix(adapter, prompts, vectors, ids)
    expected = adapter.encode([adversarial_prompt(["red", "dog", "photo"], p) for p in prompts])
    assert torch.allclose(found.hidden, expected.hidden, atol=1e-6)
    assert (found.pooled is None) == (expected.pooled is None)


def test_simplex_projection_is_the_nearest_distribution():
    torch.manual_seed(0)
    values = torch.randn(5, 7, dtype=torch.float64) * 2
    projected = project_to_simplex(values)
    assert torch.allclose(projected.sum(-1), torch.ones(5, dtype=torch.float64)) and (projected >= 0).all()
    assert torch.allclose(project_to_simplex(projected), projected)  # idempotent
    for _ in range(200):  # no other distribution is nearer
        other = torch.distributions.Dirichlet(torch.ones(7, dtype=torch.float64)).sample((5,))
        assert ((values - other) ** 2).sum(-1).ge(((values - projected) ** 2).sum(-1) - 1e-12).all()


# ---- the attacks on every family ----


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_runs_on_every_family_and_repeats_under_its_seed(tiny_pipe, name):
    target = _target(tiny_pipe, judge=lambda images, rows: [False] * len(images))
    first = build_attack(name, "tiny", SMALL[name]).run(target, ROWS)
    again = build_attack(name, "tiny", SMALL[name]).run(target, ROWS)
    assert [r.row_index for r in first] == [0, 1]
    assert all(_same(a, b) for a, b in zip(first, again))
    if build_attack(name, "tiny", SMALL[name]).output == "prompt":
        adapter = adapter_for(tiny_pipe)
        assert all(r.prompt and adapter.tokenize([r.prompt])[0].shape == (1, 77) for r in first)


def test_unlearndiffatk_rows_get_the_same_prompt_batched_or_alone():
    pipe = build_tiny_pipeline("sd1").to(torch.float64)
    target = _target(pipe, judge=lambda images, rows: [False] * len(images))
    options = {**SMALL["unlearndiffatk"], "steps_per_timestep": 4}
    together = build_attack("unlearndiffatk", "tiny", {**options, "batch_rows": 2}).run(target, ROWS)
    alone = [build_attack("unlearndiffatk", "tiny", {**options, "batch_rows": 1}).run(target, [row])[0] for row in ROWS]
    for a, b in zip(together, alone):
        assert a.prompt == b.prompt and np.allclose(a.losses, b.losses, rtol=1e-9)


def test_unlearndiffatk_stops_a_row_at_its_first_success_and_skips_rows_that_need_no_attack():
    pipe = build_tiny_pipeline("sd1")
    checks = []

    def judge(images, rows):  # the original prompt of row 0 already works; row 1 works once prefixed
        checks.append([row.prompt for row in rows])
        return [row.index == 0 or row.prompt != "a blue disk" for row in rows]

    results = build_attack("unlearndiffatk", "tiny", SMALL["unlearndiffatk"]).run(_target(pipe, judge), ROWS)
    assert results[0].skipped == "pre-attack success" and results[0].prompt == "a red circle" and results[0].steps == 0
    assert results[1].success_any_step and results[1].steps == 3  # stopped after the first timestep's check
    assert results[1].prompt.endswith(" a blue disk") and len(results[1].prompt.split()) == 3 + 3
    assert len(checks) == 2  # the pre-attack check, then one in-loop check


def test_ring_a_bell_search_improves_and_returns_its_best(sd1_pipe):
    attack = build_attack("ring-a-bell", "tiny", {**SMALL["ring-a-bell"], "generations": 12})
    (result,) = attack.run(_target(sd1_pipe), ROWS[:1])
    assert result.losses[-1] < result.losses[0]
    adapter = adapter_for(sd1_pipe)
    vector = attack.concept_vector(_target(sd1_pipe), attack.pairs(ROWS[:1], ["circle"]))
    goal = adapter.encode(["a red circle"]).hidden + 3.0 * vector.hidden
    found = ((adapter.encode([result.prompt]).hidden - goal) ** 2).sum().item()
    assert found == pytest.approx(result.losses[-1], rel=1e-4)  # the prompt written is the best one found


def test_an_attack_without_the_base_model_names_the_fix(sd1_pipe):
    target = _target(sd1_pipe)
    target.base = None
    for name in ATTACKS:
        with pytest.raises(ErasureError, match="needs the base model the weights were made from: .*--model BASE --weights FILE"):
            build_attack(name, "tiny", SMALL[name]).run(target, ROWS)


def test_budget_scales_the_main_loop_and_is_recorded():
    attack = build_attack("ring-a-bell", "mini-sd", {}, budget=0.5)
    assert attack.config.generations == 60 and attack.notes["budget"] == 0.5  # mini-sd's 120, halved
    assert attack.notes["settings_file"] == "configs/attacks/ring-a-bell/mini-sd.yaml"
    assert build_attack("ring-a-bell", "tiny", {}).config.generations == 3000  # the authors'
    assert build_attack("closed-form", "mini-sd", {}, budget=0.1).config.reg == 1e-3  # nothing to scale


# ---- the evaluator: variants, files, replay ----


@pytest.fixture(scope="module")
def attacked_run(erased_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("attacked")
    pipe = build_tiny_pipeline("sd1")
    report = evaluate(pipe, erased_file, "shapes/circle", ["world"], out, limit=6, batch_size=4, attack=list(SMALL),
                      attack_options={k: v for k, v in SMALL.items() if v}, **STEPS)
    return pipe, out, report


def test_each_attack_is_a_variant_with_its_images_files_and_asr(attacked_run):
    pipe, out, report = attacked_run
    rows = load_prompt_set("shapes/circle", 6).rows
    attacked = [row for row in rows if row.type in ("erased", "synonym")]
    assert report.data["variants"] == ["base", "erased", *(f"attacked-{name}" for name in SMALL)]
    for name, entry in report.data["attacks"].items():
        folder = out / f"attacked-{name}"
        assert sorted(p.name for p in folder.glob("*.png")) == [f"{r.index:05d}.png" for r in attacked]
        assert entry["judge"] == "world" and entry["rows"] == len(attacked)
        assert set(entry["groups"]) == {"erased", "synonym"} and entry["groups"]["erased"]["n"] == 2
        erased_hits = [img[f"attacked-{name}"]["world"]["correct"] for img in report.data["images"] if img["type"] == "erased"]
        assert entry["groups"]["erased"]["post_asr"] == pytest.approx(100 * np.mean(erased_hits))
        assert entry["groups"]["erased"]["pre_asr"] == report.data["metrics"]["world"]["erased"]["erasure"]["acc_e"]
        record = gen.read_record(gen.image_path(folder, attacked[0]))
        assert record["attack"]["name"] == name and record["seed"] == attacked[0].seed
    assert "success_any_step" in report.data["attacks"]["unlearndiffatk"]["groups"]["erased"]
    inversion = report.data["attacks"]["concept-inversion"]  # one concept: its whole cost is the unit's
    assert inversion["units"] == 1 and inversion["cpu_seconds_per_unit"] > 0 and inversion["seconds_per_unit"] > 0
    assert "## Attacks" in report.markdown and "post-attack ASR" in report.markdown
    for name in ("unlearndiffatk", "ring-a-bell", "concept-inversion"):
        assert (out / "attacks" / f"{name}.csv").is_file()
    for name in ("closed-form", "concept-inversion"):
        assert (out / "attacks" / f"{name}.safetensors").is_file()
    from safetensors.torch import load_file

    assert set(load_file(out / "attacks" / "concept-inversion.safetensors")) == {"<circle-inv>"}


@pytest.mark.parametrize("name", ["unlearndiffatk", "ring-a-bell"])
def test_a_replayed_attack_csv_makes_the_same_images(attacked_run, erased_file, tmp_path, name):
    pipe, out, _ = attacked_run
    replay = evaluate(pipe, erased_file, out / "attacks" / f"{name}.csv", ["world"], tmp_path, batch_size=4, **STEPS)
    csv_rows = load_prompt_set(out / "attacks" / f"{name}.csv").rows
    assert replay.data["variants"] == ["base", "erased"]
    for row in csv_rows:
        replayed = np.asarray(Image.open(gen.image_path(tmp_path / "erased", row)))
        original = np.asarray(Image.open(out / f"attacked-{name}" / f"{int(row.extra['row_index']):05d}.png"))
        assert np.array_equal(replayed, original)


def test_the_inverted_token_loads_in_plain_diffusers(attacked_run):
    _, out, _ = attacked_run
    from safetensors.torch import load_file

    vector = load_file(out / "attacks" / "concept-inversion.safetensors")["<circle-inv>"]
    prompt = load_prompt_set(out / "attacks" / "concept-inversion.csv").rows[0].prompt
    assert prompt.endswith(" <circle-inv>") and "circle" not in prompt.replace("<circle-inv>", "")  # word -> token
    pipe = build_tiny_pipeline("sd1")  # UCE left the text encoder as it was
    ours = encode_with_token(adapter_for(pipe), [prompt.replace("<circle-inv>", "\x00")], [vector[None]])
    pipe.load_textual_inversion(str(out / "attacks" / "concept-inversion.safetensors"), token="<circle-inv>")
    assert torch.allclose(adapter_for(pipe).encode([prompt]).hidden, ours.hidden, atol=1e-6)


def test_a_rerun_reuses_cached_attack_results(attacked_run, erased_file, monkeypatch):
    pipe, out, report = attacked_run
    for name in ("unlearndiffatk", "ring-a-bell", "concept-inversion"):
        monkeypatch.setattr(ATTACKS[name], "run", lambda *a, **k: pytest.fail("an attack ran again"))
    again = evaluate(pipe, erased_file, "shapes/circle", ["world"], out, limit=6, batch_size=4, attack=list(SMALL),
                     attack_options={k: v for k, v in SMALL.items() if v}, **STEPS)
    assert again.data["attacks"]["ring-a-bell"]["reused_from_cache"] == 4
    assert again.data["metrics"] == report.data["metrics"]


def test_restarts_rerun_each_seeded_attack_with_the_next_seeds_and_count_rows_any_run_breaks(erased_file, tmp_path,
                                                                                           monkeypatch):
    from safetensors.torch import load_file

    pipe = build_tiny_pipeline("sd1")
    kwargs = dict(limit=6, batch_size=4, attack=["closed-form", "concept-inversion"],
                  attack_options={"concept-inversion": SMALL["concept-inversion"]}, **STEPS)
    report = evaluate(pipe, erased_file, "shapes/circle", ["world"], tmp_path / "k3", attack_restarts=3, **kwargs)
    data, stems = report.data, ["concept-inversion", "concept-inversion-restart2", "concept-inversion-restart3"]
    runs = [f"attacked-{stem}" for stem in stems]
    assert data["variants"] == ["base", "erased", "attacked-closed-form", *runs]
    assert "restarts" not in data["attacks"]["closed-form"]  # a deterministic solve runs once
    restarts = data["attacks"]["concept-inversion"]["restarts"]
    assert restarts["runs"] == 3 and restarts["seeds"] == [0, 1, 2] and restarts["variants"] == runs
    for group, values in restarts["groups"].items():
        shown = [[image[run]["world"]["correct"] for image in data["images"] if image["type"] == group] for run in runs]
        assert values["per_run"][0] == data["attacks"]["concept-inversion"]["groups"][group]["post_asr"]
        assert values["per_run"] == pytest.approx([100 * np.mean(hits) for hits in shown])
        assert values["any"] == pytest.approx(100 * np.mean([any(row) for row in zip(*shown)]))
        assert values["any"] >= max(values["per_run"]) and values["n"] == len(shown[0])
    assert "| concept-inversion | erased | 2 | 0, 1, 2 |" in report.markdown
    tokens = [load_file(tmp_path / "k3" / "attacks" / f"{stem}.safetensors")["<circle-inv>"] for stem in stems]
    assert not torch.equal(tokens[0], tokens[1]) and not torch.equal(tokens[1], tokens[2])
    # the second run is the attack run alone with seed 1: the same token and images
    alone = evaluate(pipe, erased_file, "shapes/circle", ["world"], tmp_path / "seed1", limit=6, batch_size=4,
                     attack="concept-inversion", attack_options={"concept-inversion": {**SMALL["concept-inversion"], "seed": 1}},
                     **STEPS).data
    assert torch.equal(load_file(tmp_path / "seed1" / "attacks" / "concept-inversion.safetensors")["<circle-inv>"], tokens[1])
    assert alone["attacks"]["concept-inversion"]["groups"]["erased"]["post_asr"] == restarts["groups"]["erased"]["per_run"][1]
    # a rerun takes every run from the cache
    monkeypatch.setattr(ATTACKS["concept-inversion"], "run", lambda *a, **k: pytest.fail("an attack ran again"))
    again = evaluate(pipe, erased_file, "shapes/circle", ["world"], tmp_path / "k3", attack_restarts=3, **kwargs).data
    assert again["attacks"]["concept-inversion"]["restarts"] == restarts


def test_the_base_model_is_attacked_as_its_own_base(tmp_path):
    pipe = build_tiny_pipeline("sd1")
    report = evaluate(pipe, None, "shapes/circle", ["world"], tmp_path, limit=3, attack="closed-form", **STEPS)
    entry = report.data["attacks"]["closed-form"]
    assert report.data["variants"] == ["base", "attacked-closed-form"] and entry["pre_attack_variant"] == "base"


# ---- bad input ----


@pytest.mark.parametrize("extra, message", [
    (["--attack", "pgd"], "unknown attack 'pgd': use one of closed-form, unlearndiffatk, ring-a-bell, concept-inversion"),
    (["--attack", "ring-a-bell", "--attack-budget", "0"], "--attack-budget 0.0 must be a finite number > 0"),
    (["--attack", "ring-a-bell", "--attack-budget", "-1"], "--attack-budget -1.0 must be a finite number > 0"),
    (["--attack", "ring-a-bell", "--attack-restarts", "0"], "--attack-restarts 0 must be a whole number of at least 1"),
    (["--attack-restarts", "3"], "--attack-restarts is given without --attack: add --attack NAME or drop it"),
    (["--attack", "ring-a-bell", "--attack-restarts", "2", "--set", f"attack.ring-a-bell.seed={2**63 - 1}"],
     "leaves no room for 2 restarts' seeds"),
    (["--attack", "ring-a-bell", "--set", "attack.ring-a-bell.generatons=3"], "unknown attack.ring-a-bell option key 'generatons'"),
    (["--attack", "ring-a-bell", "--set", "attack.closed-form.reg=1"], "options are set for attack 'closed-form', which is not in --attack"),
    (["--attack", "unlearndiffatk", "--no-check-base"], "--attack needs the base model the weights were made for"),
])
def test_bad_attack_input_is_one_line_exit_2_and_writes_nothing(erased_file, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    argv = ["--prompts", "shapes/circle", "--model", "mini-sd", "--weights", str(erased_file), "--output", str(out)]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


# ---- objectives on mini-sd ----


@pytest.fixture(scope="module")
def mini_sd():
    if not MINI_SD:
        pytest.skip("the bundled mini-sd is not built yet")
    return erasure.load_pipeline("mini-sd", device="cpu", dtype="float32")


def _mini_target(pipe) -> AttackTarget:
    from erasure.loading import model_folder

    return AttackTarget(pipe, generation_settings(pipe, model="mini-sd"), BaseView(pipe), ["circle"],
                        model_folder=model_folder("mini-sd"))


def _denoising_loss(adapter, latents, cond, seed: int = 0) -> float:
    """Mean noise-prediction error over a fixed set of noise levels and noises."""
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for timestep in (100, 300, 500, 700, 900):
        for _ in range(4):
            noise = torch.randn(latents.shape, generator=generator)
            t = torch.full((len(latents),), timestep)
            with torch.no_grad():
                prediction = adapter.predict_noise(adapter.add_noise(latents, noise, t), t, cond)
            losses.append(((prediction - noise) ** 2).mean().item())
    return float(np.mean(losses))


def test_unlearndiffatk_finds_tokens_that_denoise_the_target_better(mini_sd):
    from erasure.concept_images import encode_images

    target = _mini_target(mini_sd)
    row = PromptRow(0, "a red square", 3, label="circle", type="erased")  # an image of a circle, a prompt of a square
    circle = dataclasses.replace(row, prompt="a red circle")
    target.reference_images = lambda rows: target.render([circle])
    attack = build_attack("unlearndiffatk", "mini-sd", {"timesteps": 4, "skip_pre_success": False})
    (result,) = attack.run(target, [row])
    adapter = adapter_for(mini_sd)
    latents = encode_images(mini_sd, target.render([circle]), 32)
    found = _denoising_loss(adapter, latents, adapter.encode([result.prompt]))
    random_prefixes = [_denoising_loss(adapter, latents, adapter.encode([adversarial_prompt(words, row.prompt)]))
                       for words in (["hollow", "black", "box"], ["small", "star", "plain"], ["gray", "the", "wedge"])]
    assert found < min(random_prefixes), (result.prompt, found, random_prefixes)


def test_concept_inversion_lowers_its_objective(mini_sd):
    target = _mini_target(mini_sd)
    attack = build_attack("concept-inversion", "mini-sd", {"steps": 60, "initializer": "shape", "num_images": 8})
    rows = [PromptRow(0, "a red circle", 3, label="circle", type="erased")]
    (result,) = attack.run(target, rows)
    adapter = adapter_for(mini_sd)
    latents, _, _ = attack._training_latents(target, "circle", rows)
    start = [table.weight.detach()[adapter.concept_token_ids("shape")[0]][None] for table in adapter.token_embeddings()]
    learned = [result.tokens[name][None] for name in adapter.text_encoders()]
    prompts = ["a \x00"] * len(latents)
    losses = [_denoising_loss(adapter, latents, encode_with_token(adapter, prompts, [v.expand(len(latents), -1)]))
              for v in (start[0], learned[0])]
    assert losses[1] < losses[0], losses

