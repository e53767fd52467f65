"""AdvUnlearn on the tiny pipelines: what trains, the regulariser's bound, the inner attack,
resume, failure modes."""

from __future__ import annotations

import json
import signal
from contextlib import ExitStack

import pytest
import torch
from safetensors.torch import load_file

import erasure
from erasure.adapters import adapter_for
from erasure.attacks.tokens import SLOT, encode_with_vectors
from erasure.concepts import Concept
from erasure.config import build_config, configs_dir, read_yaml
from erasure.errors import ErasureError
from erasure.methods import advunlearn
from erasure.methods.advunlearn import AdvUnlearnConfig
from erasure.tiny import build_tiny_pipeline
from erasure.trajectories import sample_until
from erasure.world.captions import COLOUR_SYNONYMS, STYLE_WORDS, SYNONYMS
from erasure.training import CHECKPOINT_INDEX, RunOptions, swapped_parameters

# A 3-step DDIM bank of 4 trajectories and a few iterations keep each run to seconds.
FAST = dict(iterations=4, warmup=2, ddim_steps=3, lr=1e-3, attack_steps=2, bank_size=4, retain_limit=6, retain_batch=3)
CIRCLE = [Concept("circle")]
# Long enough, with every retain prompt in one batch, for the retain terms to show.
REGULARISED = dict(FAST, iterations=20, warmup=5, lr=2e-5, retain_batch=7, retain_empty_prompt=True, negative_guidance=3.0)


def snapshot(pipe) -> dict[str, torch.Tensor]:
    return {f"{c}.{n}": v.clone() for c in ("unet", "text_encoder") for n, v in getattr(pipe, c).state_dict().items()}


def changed_names(pipe, before) -> set[str]:
    now = snapshot(pipe)
    return {name for name in before if not torch.equal(before[name], now[name])}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_the_text_encoder_trains_without_its_token_tables_and_the_pipeline_is_left_unchanged(family):
    pipe = build_tiny_pipeline(family)
    before = {c: {n: v.clone() for n, v in m.state_dict().items()} for c, m in advunlearn.components(adapter_for(pipe)).items()}
    edit = advunlearn.erase(pipe, CIRCLE, AdvUnlearnConfig(**FAST))

    assert set(edit.new) == set(adapter_for(pipe).text_encoders())  # text_encoder (and SDXL's text_encoder_2)
    for component, values in edit.new.items():
        encoder = getattr(pipe, component)
        tables = {f"{name}.{p}" for name, module in encoder.named_modules() if isinstance(module, torch.nn.Embedding)
                  for p, _ in module.named_parameters()}
        assert tables and not tables & set(values)
        trainable = {n for n, _ in encoder.named_parameters()} - tables
        # SDXL's first encoder feeds the UNet its penultimate layer: the rest gets no gradient and is left out.
        if family == "sdxl" and component == "text_encoder":
            assert set(values) < trainable and not any(n.startswith("final_layer_norm") for n in values)
        else:
            assert set(values) == trainable
        assert all(torch.equal(edit.original[component][n], before[component][n]) for n in values)
        moved = [n for n, v in values.items() if not torch.equal(v, before[component][n])]
        assert len(moved) == len(values), "every trained tensor took Adam steps"
    now = {c: m.state_dict() for c, m in advunlearn.components(adapter_for(pipe)).items()}
    assert all(torch.equal(before[c][n], now[c][n]) for c in before for n in before[c])


def test_unet_cross_attention_is_an_option():
    pipe = build_tiny_pipeline("sd1")
    edit = advunlearn.erase(pipe, CIRCLE, AdvUnlearnConfig(**FAST, module="unet-xattn"))
    assert set(edit.new) == {"unet"}
    assert edit.new["unet"] and all(".attn2." in name for name in edit.new["unet"])


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_the_unet_outside_cross_attention_is_the_authors_noxattn(family):
    pipe = build_tiny_pipeline(family)
    before = snapshot(pipe)
    edit = advunlearn.erase(pipe, CIRCLE, AdvUnlearnConfig(**FAST, module="unet-noxattn"))
    assert set(edit.new) == {"unet"}
    trained = set(edit.new["unet"])
    # noxattn: not the cross-attention, the time (and SDXL's added) embedding or the output head.
    frozen = (".attn2.", "time_embedding.", "add_embedding.", "conv_norm_out.", "conv_out.")
    assert not [n for n in trained if any(part in f".{n}" for part in frozen)]
    every = {n for n, _ in pipe.unet.named_parameters()}
    allowed = {n for n in every if not any(part in f".{n}" for part in frozen)}
    assert trained and len(trained) > len(allowed) // 2, "the resnets, self-attention and norms train"
    assert any(".attn1." in n for n in trained) and any("resnets." in n for n in trained)
    assert not changed_names(pipe, before), "the pipeline is left unchanged"


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_encoder_layers_train_those_layers_alone(family):
    pipe = build_tiny_pipeline(family)
    edit = advunlearn.erase(pipe, CIRCLE, AdvUnlearnConfig(**FAST, encoder_layers=[0]))
    whole = advunlearn.erase(pipe, CIRCLE, AdvUnlearnConfig(**FAST))
    for component, values in edit.new.items():
        layer_0 = {n for n in whole.new[component] if ".layers.0." in n}
        assert layer_0 and set(values) == layer_0  # attention, MLP and layer norms of layer 0; no final norm
    assert set(edit.new) == set(adapter_for(pipe).text_encoders())


def predictions(adapter, prompts: list[str]) -> torch.Tensor:
    latents = torch.randn((3, *adapter.latent_shape), generator=torch.Generator().manual_seed(5))
    cond = adapter.encode(prompts)
    with torch.no_grad():
        return torch.stack([adapter.predict_noise(latents, 500, cond.select(slice(i, i + 1))) for i in range(len(prompts))])


def test_the_regulariser_bounds_the_change_of_retained_prompts_while_the_erased_prompt_moves():
    pipe = build_tiny_pipeline("sd1")
    adapter = adapter_for(pipe)
    retained = advunlearn.retain_prompts(CIRCLE, AdvUnlearnConfig(**REGULARISED), str(pipe.name_or_path))
    base_retained, base_erased, base_empty = predictions(adapter, retained), predictions(adapter, ["circle"]), predictions(adapter, [""])
    base_hidden = adapter.encode(retained + ["circle"]).hidden

    def after(retain_weight: float):
        edit = advunlearn.erase(pipe, CIRCLE, AdvUnlearnConfig(**REGULARISED, retain_weight=retain_weight))
        with swapped_parameters(pipe.text_encoder, edit.new["text_encoder"]):
            hidden = adapter.encode(retained + ["circle"]).hidden
            return predictions(adapter, retained), predictions(adapter, ["circle"]), hidden

    def change(a, b):
        return (a - b).flatten(1).norm(dim=1)

    free_retained, _, free_hidden = after(0.0)
    held_retained, held_erased, held_hidden = after(10.0)
    # Measured: retained predictions move 0.10-0.19 with the regulariser, 0.44-0.55 without.
    assert change(held_retained, base_retained).max() < 0.5 * change(free_retained, base_retained).min()
    assert change(held_hidden[:-1], base_hidden[:-1]).mean() < 0.5 * change(free_hidden[:-1], base_hidden[:-1]).mean()
    # The erased prompt's prediction moves towards ESD's target (1.50 -> 1.33 measured).
    target = base_empty - 3.0 * (base_erased - base_empty)
    assert (held_erased - target).norm() < 0.95 * (base_erased - target).norm()
    assert change(held_hidden[-1:], base_hidden[-1:]).item() > 0


def test_the_retain_set_leaves_out_the_synonyms_of_the_erased_concepts_only(tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("a red disk\na blue box\na green wedge\na star\na Square and a star\na round shape\n")
    config = AdvUnlearnConfig(retain_prompts=str(captions), retain_exclude=["star"],
                              concept_synonyms={"circle": ["disk", "round"], "square": ["box"]})
    assert advunlearn.retain_prompts([Concept("circle")], config, "") == ["a blue box", "a green wedge"]
    assert advunlearn.retain_prompts([Concept("red circle"), Concept("square")], config, "") == ["a green wedge"]
    assert advunlearn.retain_prompts([Concept("triangle")], config, "") == \
        ["a red disk", "a blue box", "a green wedge", "a round shape"]


def test_the_mini_sd_config_leaves_out_every_other_name_the_world_gives_a_concept(tmp_path):
    # configs/advunlearn/mini-sd.yaml copies the world's table of other names by hand: a name
    # missing there would stay in the retain set and hold its concept back under that name.
    names = {**SYNONYMS, **COLOUR_SYNONYMS, **{style: [w for w in words if w != style]
                                               for style, words in STYLE_WORDS.items()}}
    captions = {concept: [f"a {word}" for word in (concept, *words)] for concept, words in names.items()}
    path = tmp_path / "captions.txt"
    path.write_text("".join(f"{caption}\n" for group in captions.values() for caption in group))
    settings = {**read_yaml(configs_dir() / "advunlearn" / "mini-sd.yaml"), "retain_prompts": str(path),
                "retain_limit": None, "retain_empty_prompt": False}
    config = build_config(AdvUnlearnConfig, settings)
    for concept in names:
        others = [caption for name, group in captions.items() if name != concept for caption in group]
        assert advunlearn.retain_prompts([Concept(concept)], config, "") == others, concept


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_the_encoding_term_holds_the_retained_prompts_encodings(family):
    pipe = build_tiny_pipeline(family)
    adapter = adapter_for(pipe)
    retained = advunlearn.retain_prompts(CIRCLE, AdvUnlearnConfig(**REGULARISED), str(pipe.name_or_path))
    base = adapter.encode(retained + ["circle"])

    def drift(weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The retained prompts' and the erased prompt's encoding drift after training."""
        edit = advunlearn.erase(pipe, CIRCLE, AdvUnlearnConfig(**REGULARISED, retain_embedding_weight=weight))
        with ExitStack() as stack:
            for component, values in edit.new.items():
                stack.enter_context(swapped_parameters(getattr(pipe, component), values))
            now = adapter.encode(retained + ["circle"])
        rows = torch.arange(len(retained))
        erased = torch.tensor([len(retained)])
        return tuple(advunlearn.encoding_drift(now.select(r), base.select(r)) for r in (rows, erased))

    free_retained, _ = drift(0.0)
    held_retained, held_erased = drift(1.0)
    # Measured (sd1, sdxl): retained 5.0e-3, 4.2e-3 without the term; 3.1e-5, 5.8e-6 with
    # it, while the erased prompt moves 6.4e-5, 5.7e-4.
    assert held_retained < 0.1 * free_retained
    assert held_erased > 1.5 * held_retained


@pytest.mark.parametrize("attack_type", ["prefix", "replace"])
@pytest.mark.parametrize("objective", ["prediction", "denoising"])
def test_the_inner_attack_lowers_its_objective(monkeypatch, attack_type, objective):
    """On a fixed draw the attack's loss falls over its steps, for both variants, both
    placements and both objectives."""
    first_draw = advunlearn.Loop.attack_draw

    def always_the_first_draw(self):
        self.fixed = getattr(self, "fixed", None) or first_draw(self)
        return self.fixed

    monkeypatch.setattr(advunlearn.Loop, "attack_draw", always_the_first_draw)
    for attack in ("pgd", "fast"):
        settings = {**FAST, "attack_steps": 8, "attack_lr": 2e-2, "concept_templates": ["a photo of a {}"]}
        config = AdvUnlearnConfig(**settings, attack=attack, attack_type=attack_type, attack_objective=objective)
        rounds = advunlearn.erase(build_tiny_pipeline("sd1"), CIRCLE, config).extra["attack_losses"]
        assert len(rounds) == FAST["iterations"] - FAST["warmup"]
        assert all(last < first for first, last in rounds), (attack, rounds)


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_the_denoising_attack_reconstructs_the_frozen_models_concept_images(monkeypatch, family):
    """``denoising`` scores the vectors on the ends of the frozen model's concept runs,
    noised at a training timestep, against the model's training target there."""
    adapter = adapter_for(build_tiny_pipeline(family))
    scheduler = adapter.ddim_scheduler(3)
    with torch.no_grad():
        # The bank erase samples below: seed 0, FAST's 4 trajectories, the two prompts in turn.
        bank = advunlearn.frozen_bank(adapter, scheduler, ["a circle", "a red circle"], 4, 3.0,
                                      torch.Generator().manual_seed(0), keep_unconditional=True)
        noise = torch.randn((4, *adapter.latent_shape), generator=torch.Generator().manual_seed(0))
        cond = adapter.encode(["a circle", "a red circle"] * 2)
        ends = sample_until(adapter, scheduler, noise, 3, cond, adapter.encode([""]), 3.0)
    torch.testing.assert_close(advunlearn.final_latents(bank, scheduler, 3.0), ends)

    draws = []
    real = advunlearn.Loop.attack_draw
    monkeypatch.setattr(advunlearn.Loop, "attack_draw", lambda self: draws.append(real(self)) or draws[-1])
    config = AdvUnlearnConfig(**{**FAST, "attack_steps": 3}, attack_objective="denoising",
                              concept_templates=["a {}", "a red {}"])
    advunlearn.erase(build_tiny_pipeline(family), CIRCLE, config)
    assert len(draws) == 3 * (FAST["iterations"] - FAST["warmup"])
    assert len({int(d.timestep) for d in draws}) > 1
    for draw in draws:  # x_t = a x_0 + s eps and the target eps (or v) give x_0 back
        alpha = adapter.training_noise.alphas_cumprod[draw.timestep].sqrt()
        sigma = (1 - adapter.training_noise.alphas_cumprod[draw.timestep]).sqrt()
        if adapter.training_noise.config.prediction_type == "epsilon":
            x0 = (draw.latents - sigma * draw.target) / alpha
        else:  # v = a eps - s x_0, so x_0 = a x_t - s v
            x0 = alpha * draw.latents - sigma * draw.target
        assert min((x0 - end).abs().max() for end in ends) < 1e-3


def word_vectors(adapter, words: str) -> list[torch.Tensor]:
    """The token table's rows of ``words``, ``(1, k, width)`` per text encoder."""
    ids = torch.tensor(adapter.tokenizers()[0](words, add_special_tokens=False).input_ids)
    return [table.weight.detach()[ids][None] for table in adapter.token_embeddings()]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_replace_puts_the_vectors_exactly_where_the_concept_words_were(family):
    """Vectors that are real words' table rows encode as the prompt with those words in
    place of the concept (every other token as it was); ``prefix`` as the words before it."""
    adapter = adapter_for(build_tiny_pipeline(family))
    templates = ["a photo of a {} on a white background", "{}"]
    placed = advunlearn.adversarial_prompts([Concept("blue circle")], templates)

    def encoded(placement: str, row: int, words: str):
        return encode_with_vectors(adapter, [placed[placement][row]], word_vectors(adapter, words))

    expected = {("replace", 0): "a photo of a red dog photo on a white background", ("replace", 1): "red dog photo",
                ("prefix", 0): "red dog photo a photo of a blue circle on a white background",
                ("prefix", 1): "red dog photo blue circle"}
    for (placement, row), text in expected.items():
        found, plain = encoded(placement, row, "red dog photo"), adapter.encode([text])
        assert torch.allclose(found.hidden, plain.hidden, atol=1e-6), (placement, row)
        if plain.pooled is not None:
            assert torch.allclose(found.pooled, plain.pooled, atol=1e-6)
    # One vector for a two-token concept: the prompt closes up behind it.
    one = encoded("replace", 0, "square")
    assert torch.allclose(one.hidden, adapter.encode(["a photo of a square on a white background"]).hidden, atol=1e-6)
    # Free vectors move only their own place and what attends to it (causal: earlier tokens untouched).
    vectors = [v.clone().requires_grad_(True) for v in word_vectors(adapter, "red dog photo")]
    moved = [v + torch.randn(v.shape, generator=torch.Generator().manual_seed(3)) for v in vectors]
    before = encoded("replace", 0, "red dog photo").hidden
    after = encode_with_vectors(adapter, [placed["replace"][0]], moved).hidden
    start = 1 + len(adapter.concept_token_ids("a photo of a"))
    assert torch.equal(after[0, :start], before[0, :start]) and not torch.allclose(after[0, start], before[0, start])
    after.sum().backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in vectors)


def test_the_loop_trains_on_the_placement_it_attacks(monkeypatch):
    """``replace`` encodes only prompts with the concept's words replaced; ``alternate``
    switches placement from one attack round to the next, its outer steps following."""
    seen = []
    real = advunlearn.encode_with_vectors

    def recording(adapter, prompts, vectors, ids=None):
        seen.append(prompts[0])
        return real(adapter, prompts, vectors, ids)

    monkeypatch.setattr(advunlearn, "encode_with_vectors", recording)
    settings = {**FAST, "iterations": 6, "attack_steps": 1, "concept_templates": ["a {}", "a photo of a {}"]}
    placed = advunlearn.adversarial_prompts(CIRCLE, settings["concept_templates"])
    advunlearn.erase(build_tiny_pipeline("sd1"), CIRCLE, AdvUnlearnConfig(**settings, attack_type="replace"))
    assert len(seen) == 2 * 4 and set(seen) <= set(placed["replace"])  # 4 rounds, 1 attack step + 1 outer step each
    assert not any("circle" in text for text in seen)

    seen.clear()
    advunlearn.erase(build_tiny_pipeline("sd1"), CIRCLE,
                     AdvUnlearnConfig(**settings, attack_type="alternate", attack_every=2))
    rounds = [seen[i:i + 3] for i in range(0, len(seen), 3)]  # every 2 iterations: 1 attack step + 2 outer steps
    kinds = [{"prefix" if text in placed["prefix"] else "replace" for text in r} for r in rounds]
    assert kinds == [{"prefix"}, {"replace"}]


def test_replay_keeps_every_nth_attacks_vectors_and_trains_on_one_of_them(monkeypatch):
    """``attack_replay_every`` 2: attacks 2, 4 and 6 of 6 are kept; from the first kept set
    on, each outer step encodes the latest vectors and then one kept set."""
    found, outer, loops = [], [], []
    real_attack, real_outer, real_encode = advunlearn.Loop.attack, advunlearn.Loop.outer_step, \
        advunlearn.Loop.encode_adversarial

    def attack(self, placement):
        vectors, losses = real_attack(self, placement)
        found.append([v.clone() for v in vectors])
        loops.append(self)
        return vectors, losses

    def outer_step(self, placement):
        outer.append([])
        return real_outer(self, placement)

    def encode_adversarial(self, row, vectors, placement):
        if outer and not any(v.requires_grad for v in vectors):
            outer[-1].append([v.detach().clone() for v in vectors])
        return real_encode(self, row, vectors, placement)

    for name, wrapper in [("attack", attack), ("outer_step", outer_step), ("encode_adversarial", encode_adversarial)]:
        monkeypatch.setattr(advunlearn.Loop, name, wrapper)
    edit = advunlearn.erase(build_tiny_pipeline("sd1"), CIRCLE,
                            AdvUnlearnConfig(**{**FAST, "iterations": 8}, attack_init="latest", attack_replay_every=2))

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b))

    kept = loops[-1].kept_vectors("prefix")
    assert edit.extra["kept_attack_sets"] == {"prefix": 3} and len(found) == 6
    assert all(same(k, f) for k, f in zip(kept, found[1::2]))
    adversarial = outer[2:]  # the 2 warm-up steps encode the concept prompt itself
    assert [len(encoded) for encoded in adversarial] == [1, 2, 2, 2, 2, 2]
    for attack_number, encoded in enumerate(adversarial, start=1):
        assert same(encoded[0], found[attack_number - 1])
        if len(encoded) == 2:
            assert any(same(encoded[1], k) for k in kept[: attack_number // 2])
    assert any(not same(e[0], e[1]) for e in adversarial if len(e) == 2)  # a kept set, not the latest again


def test_inversion_starts_at_the_concepts_word_and_each_kept_one_is_trained_against(monkeypatch):
    """``inversion_every`` 2 over 6 adversarial iterations: 3 inversions, each starting at
    the word's own vector in place of the concept's words, its loss falling on a fixed
    draw; from the first on, each outer step also encodes one kept inversion there."""
    first_draw = advunlearn.Loop.denoising_draw

    def always_the_first_draw(self, count, concept=None):
        self.fixed = getattr(self, "fixed", None) or first_draw(self, count, concept)
        return self.fixed

    starts, outer, loops = [], [], []
    real_invert, real_outer, real_encode = advunlearn.Loop.invert, advunlearn.Loop.outer_step, \
        advunlearn.Loop.encode_adversarial

    def invert(self, concept):
        loops.append(self)
        return real_invert(self, concept)

    def outer_step(self, placement):
        outer.append([])
        return real_outer(self, placement)

    def encode_adversarial(self, rows, vectors, placement):
        if any(v.requires_grad for v in vectors) and len(loops) > len(starts):  # an inversion's first step
            prompts = [self.adversarial_prompts[placement][r] for r in rows]
            starts.append(([v.detach().clone() for v in vectors], prompts))
        elif outer and not any(v.requires_grad for v in vectors):
            outer[-1].append([v.detach().clone() for v in vectors])
        return real_encode(self, rows, vectors, placement)

    for name, wrapper in [("denoising_draw", always_the_first_draw), ("invert", invert), ("outer_step", outer_step),
                          ("encode_adversarial", encode_adversarial)]:
        monkeypatch.setattr(advunlearn.Loop, name, wrapper)
    pipe = build_tiny_pipeline("sd1")
    settings = {**FAST, "iterations": 8, "concept_templates": ["a {}", "a photo of a {}"]}
    edit = advunlearn.erase(pipe, CIRCLE, AdvUnlearnConfig(**settings, attack_type="prefix", inversion_every=2,
                                                           inversion_steps=8, inversion_lr=5e-2, inversion_batch=3))

    assert edit.extra["kept_inversions"] == 3 and len(starts) == 3
    word = word_vectors(adapter_for(pipe), "circle")
    placed = advunlearn.adversarial_prompts(CIRCLE, settings["concept_templates"])["replace"]
    for vectors, prompts in starts:
        assert all(torch.equal(v, w) for v, w in zip(vectors, word))
        assert len(prompts) == 3 and set(prompts) <= set(placed)
    assert all(last < first for first, last in edit.extra["inversion_losses"])
    kept = loops[-1].kept_vectors("inversion")
    adversarial = outer[2:]  # the warm-up steps encode the concept prompt itself
    assert [len(encoded) for encoded in adversarial] == [2] * 6  # the latest prefix vectors, then an inversion
    for iteration, encoded in enumerate(adversarial):
        assert any(all(torch.equal(a, b) for a, b in zip(encoded[1], k)) for k in kept[: iteration // 2 + 1])
    assert not any(torch.equal(k[0], word[0]) for k in kept)


def test_a_bank_smaller_than_the_prompts_holds_every_concept(monkeypatch):
    """Three concepts in three templates (9 prompts) and a bank of 4 trajectories: the bank
    takes the prompts in turn, so each concept must come early in their order."""
    loops = []
    real_init = advunlearn.Loop.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        loops.append(self)

    monkeypatch.setattr(advunlearn.Loop, "__init__", init)
    concepts = [Concept("circle"), Concept("square"), Concept("red star")]
    advunlearn.erase(build_tiny_pipeline("sd1"), concepts,
                     AdvUnlearnConfig(**FAST, concept_templates=["a {}", "a photo of a {}", "a drawing of a {}"]))
    loop = loops[0]
    banked = [loop.concept_prompts[int(row)] for row in loop.concept_bank.rows]
    assert len(banked) == 4 and {c.text for c in concepts} <= {p.split(" of a ")[-1].removeprefix("a ") for p in banked}
    for row, prompt in enumerate(loop.concept_prompts):  # row i is about concept i % 3, in both placements
        assert prompt.endswith(concepts[row % 3].text)
        assert loop.adversarial_prompts["prefix"][row].endswith(prompt)
        assert loop.adversarial_prompts["replace"][row] == prompt.replace(concepts[row % 3].text, SLOT)


def test_several_concepts_are_each_inverted_and_trained_against_their_own_inversions(monkeypatch):
    """"circle" (one token) and "red square" (two), ``inversion_every`` 2 over 4 adversarial
    iterations: each round inverts both, on images of that concept, from its words; each
    outer step trains on a kept inversion of its latent's own concept."""
    inverted, outer, loops, inside = [], [], [], []
    real_invert, real_outer, real_encode = advunlearn.Loop.invert, advunlearn.Loop.outer_step, \
        advunlearn.Loop.encode_adversarial

    def invert(self, concept):
        loops.append(self)
        inverted.append((concept, []))
        inside.append(True)
        found = real_invert(self, concept)
        inside.pop()
        return found

    def outer_step(self, placement):
        outer.append([])
        return real_outer(self, placement)

    def encode_adversarial(self, rows, vectors, placement):
        record = (list(rows), [v.detach().clone() for v in vectors])
        if inside:
            inverted[-1][1].append(record)
        elif outer:
            outer[-1].append(record)
        return real_encode(self, rows, vectors, placement)

    for name, wrapper in [("invert", invert), ("outer_step", outer_step), ("encode_adversarial", encode_adversarial)]:
        monkeypatch.setattr(advunlearn.Loop, name, wrapper)
    pipe = build_tiny_pipeline("sd1")
    concepts = [Concept("circle"), Concept("red square")]
    edit = advunlearn.erase(pipe, concepts, AdvUnlearnConfig(**{**FAST, "iterations": 6}, concept_templates=["a {}", "a photo of a {}"],
                                                             attack_type="prefix", inversion_every=2, inversion_steps=3))

    words = [word_vectors(adapter_for(pipe), c.text) for c in concepts]
    assert [concept for concept, _ in inverted] == [0, 1, 0, 1] and edit.extra["kept_inversions"] == 4
    for concept, steps in inverted:
        assert len(steps) == 3 and all(row % 2 == concept for rows, _ in steps for row in rows)
        assert all(torch.equal(v, w) for v, w in zip(steps[0][1], words[concept]))
    kept = loops[-1].kept_vectors("inversion")
    assert [k[0].shape[1] for k in kept] == [1, 2, 1, 2]
    for iteration, encoded in enumerate(outer[2:]):  # after the warm-up: the prefix vectors, then an inversion
        (rows, vectors) = encoded[1]
        own = kept[: 2 * (iteration // 2 + 1)][rows[0] % 2::2]  # the rounds so far, this row's concept
        assert any(all(torch.equal(a, b) for a, b in zip(vectors, k)) for k in own), (iteration, rows)


def test_the_bank_keeps_the_frozen_predictions_and_chunks_change_nothing(monkeypatch):
    """Each latent keeps its run's prompt and ``""`` predictions; sampling in chunks (for
    memory) gives the bank sampled in one batch."""
    adapter = adapter_for(build_tiny_pipeline("sd1"))
    scheduler = adapter.ddim_scheduler(3)
    prompts = ["a circle", "a square", "a star"]

    def bank():
        with torch.no_grad():
            return advunlearn.frozen_bank(adapter, scheduler, prompts, 5, 3.0, torch.Generator().manual_seed(0),
                                          keep_unconditional=True)

    whole = bank()
    monkeypatch.setattr(advunlearn, "BANK_CHUNK", 2)
    chunked = bank()
    assert chunked.rows.tolist() == whole.rows.tolist() == [0, 1, 2, 0, 1]
    assert chunked.values.shape == (3, 5, 2, *adapter.latent_shape)
    torch.testing.assert_close(chunked.latents, whole.latents)
    torch.testing.assert_close(chunked.values, whole.values)
    step, trajectory = 1, 4
    timestep = scheduler.timesteps[step]
    model_input = scheduler.scale_model_input(chunked.latents[step, trajectory:trajectory + 1], timestep)
    with torch.no_grad():
        for kept, prompt in ((advunlearn.CONDITIONAL, prompts[1]), (advunlearn.UNCONDITIONAL, "")):
            expected = adapter.predict_noise(model_input, timestep, adapter.encode([prompt]))
            torch.testing.assert_close(chunked.values[step, trajectory, kept], expected[0])


def noise_predictions(pipe) -> torch.Tensor:
    """The UNet's predictions for prompts encoded by the pipeline's text encoder as it is."""
    adapter = adapter_for(pipe)
    latents = torch.randn((2, *adapter.latent_shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return adapter.predict_noise(latents, 400, adapter.encode(["a circle", "a square"]))


def test_weights_round_trip_through_save_apply_and_plain_diffusers(tmp_path):
    pipe = build_tiny_pipeline("sd1")
    edited = erasure.erase(pipe, "advunlearn", "circle", **FAST)
    path = edited.save(tmp_path / "circle.safetensors")
    with swapped_parameters(pipe.text_encoder, edited.components["text_encoder"]):
        trained = noise_predictions(pipe)
    assert not torch.equal(trained, noise_predictions(pipe))

    applied = build_tiny_pipeline("sd1")
    erasure.apply(applied, path)
    assert torch.equal(noise_predictions(applied), trained)

    plain = build_tiny_pipeline("sd1")  # diffusers alone, as the README shows
    state = load_file(str(path))
    part = {key.split(".", 1)[1]: value for key, value in state.items() if key.startswith("text_encoder.")}
    assert part and len(part) == len(state)
    assert not plain.text_encoder.load_state_dict(part, strict=False).unexpected_keys
    assert torch.equal(noise_predictions(plain), trained)


# A second stage on the UNet outside cross-attention, at the rate a UNet stage needs.
UNET_STAGE = {"module": "unet-noxattn", "lr": 5e-4}


def test_two_stages_are_the_two_one_stage_runs_in_one_file(tmp_path):
    pipe = build_tiny_pipeline("sd1")
    before = snapshot(pipe)
    edited = erasure.erase(pipe, "advunlearn", "circle", **FAST, second_stage=UNET_STAGE)
    encoder = advunlearn.erase(pipe, CIRCLE, AdvUnlearnConfig(**FAST))
    unet = advunlearn.erase(pipe, CIRCLE, AdvUnlearnConfig(**{**FAST, **UNET_STAGE}))
    assert not changed_names(pipe, before)
    for one in (encoder, unet):
        for component, values in one.new.items():
            assert edited.components[component].keys() == values.keys()
            assert all(torch.equal(edited.components[component][n], v) for n, v in values.items()), component
    assert edited.extra["second_stage"]["losses"] == unet.extra["losses"]
    assert edited.config["second_stage"] == UNET_STAGE

    path = edited.save(tmp_path / "circle.safetensors")
    applied = build_tiny_pipeline("sd1")
    erasure.apply(applied, path)
    with ExitStack() as stack:  # both components in place, as the file holds them
        for component, values in edited.components.items():
            stack.enter_context(swapped_parameters(getattr(pipe, component), values))
        assert torch.equal(noise_predictions(applied), noise_predictions(pipe))


def test_a_run_stopped_in_the_second_stage_resumes_there_bit_identically(monkeypatch, tmp_path):
    config = AdvUnlearnConfig(**FAST, seed=3, second_stage=UNET_STAGE)
    reference = advunlearn.erase(build_tiny_pipeline("sd1"), CIRCLE, config, RunOptions(checkpoint_dir=tmp_path / "once"))
    assert not (tmp_path / "once").exists(), "an uninterrupted run leaves no checkpoint behind"

    pipe = build_tiny_pipeline("sd1")
    real, calls = advunlearn.Loop.step, {"n": 0, "stop_at": FAST["iterations"] + 3}  # the second stage's third

    def step(self, index):
        calls["n"] += 1
        if calls["n"] == calls["stop_at"]:
            signal.raise_signal(signal.SIGINT)
        return real(self, index)

    monkeypatch.setattr(advunlearn.Loop, "step", step)
    with pytest.raises(KeyboardInterrupt):
        advunlearn.erase(pipe, CIRCLE, config, RunOptions(checkpoint_dir=tmp_path / "run"))
    assert json.loads((tmp_path / "run" / CHECKPOINT_INDEX).read_text())["step"] == FAST["iterations"]
    assert json.loads((tmp_path / "run" / "second-stage" / CHECKPOINT_INDEX).read_text())["step"] == 3

    calls.update(n=0, stop_at=None)
    resumed = advunlearn.erase(pipe, CIRCLE, config, RunOptions(checkpoint_dir=tmp_path / "run", resume=True))
    assert calls["n"] == FAST["iterations"] - 3, "only the second stage's last iteration runs again"
    assert resumed.extra["second_stage"]["losses"] == reference.extra["second_stage"]["losses"]
    for component, values in reference.new.items():
        assert all(torch.equal(resumed.new[component][n], v) for n, v in values.items()), component


def test_the_wrong_base_is_refused(tmp_path):
    path = erasure.erase(build_tiny_pipeline("sd1"), "advunlearn", "circle", **FAST).save(tmp_path / "circle.safetensors")
    other = build_tiny_pipeline("sd1", seed=1)
    before = {n: v.clone() for n, v in other.text_encoder.state_dict().items()}
    with pytest.raises(ErasureError, match="base"):
        erasure.apply(other, path)
    assert all(torch.equal(before[n], v) for n, v in other.text_encoder.state_dict().items())


@pytest.mark.parametrize(("attack_type", "replay_every", "embedding_weight", "inversion_every"),
                         [("prefix", 0, 0.0, 0), ("alternate", 0, 0.0, 0), ("prefix", 1, 1.0, 1)])
def test_resume_after_ctrl_c_is_bit_identical(monkeypatch, tmp_path, attack_type, replay_every, embedding_weight,
                                              inversion_every):
    """``alternate``: the round after the break continues the prefix vectors of the round
    before it. Replay and inversions: the sets kept before the break are replayed after it.
    The encoding term: its frozen reference is the original encoder's, not the checkpoint's."""
    config = AdvUnlearnConfig(**{**FAST, "iterations": 6}, attack_init="latest", seed=3, attack_type=attack_type,
                              attack_replay_every=replay_every, retain_embedding_weight=embedding_weight,
                              inversion_every=inversion_every, inversion_steps=2)
    reference = advunlearn.erase(build_tiny_pipeline("sd1"), CIRCLE, config)

    pipe = build_tiny_pipeline("sd1")
    before = snapshot(pipe)
    real, calls = advunlearn.Loop.step, {"n": 0}

    def step(self, index):
        calls["n"] += 1
        if calls["n"] == 4:  # after the warm-up: the adversarial vectors are part of the state
            signal.raise_signal(signal.SIGINT)
        return real(self, index)

    monkeypatch.setattr(advunlearn.Loop, "step", step)
    with pytest.raises(KeyboardInterrupt):
        advunlearn.erase(pipe, CIRCLE, config, RunOptions(checkpoint_dir=tmp_path))
    assert not changed_names(pipe, before)
    assert json.loads((tmp_path / CHECKPOINT_INDEX).read_text())["step"] == 4

    monkeypatch.undo()
    resumed = advunlearn.erase(pipe, CIRCLE, config, RunOptions(checkpoint_dir=tmp_path, resume=True))
    assert resumed.extra["losses"] == reference.extra["losses"]
    assert resumed.extra["attack_losses"] == reference.extra["attack_losses"]
    assert resumed.extra["inversion_losses"] == reference.extra["inversion_losses"]
    assert all(torch.equal(resumed.new["text_encoder"][n], v) for n, v in reference.new["text_encoder"].items())


def test_a_non_finite_loss_stops_with_the_cause(monkeypatch, tmp_path):
    def diverged(self, adversarial):
        from erasure.training import finite_value

        return finite_value(torch.tensor(float("nan")), "the trained weights diverged: lower lr")

    monkeypatch.setattr(advunlearn.Loop, "outer_step", diverged)
    with pytest.raises(ErasureError, match="lower lr"):
        advunlearn.erase(build_tiny_pipeline("sd1"), CIRCLE, AdvUnlearnConfig(**FAST), RunOptions(checkpoint_dir=tmp_path))
    assert (tmp_path / CHECKPOINT_INDEX).is_file()


def test_bad_input_is_refused(tmp_path):
    only_circles = tmp_path / "captions.txt"
    only_circles.write_text("a red circle\na Circle on a white background\n")
    pipe = build_tiny_pipeline("sd1")
    with pytest.raises(ErasureError, match="maps to a target"):
        advunlearn.erase(pipe, [Concept("circle", "square")], AdvUnlearnConfig(**FAST))
    with pytest.raises(ErasureError, match="concept_templates"):
        AdvUnlearnConfig(concept_templates=["a photo"])
    with pytest.raises(ErasureError, match="warmup"):
        AdvUnlearnConfig(warmup=-1)
    with pytest.raises(ErasureError, match=r"encoder_layers \[7\]: text_encoder has 2 layers, numbered 0-1"):
        advunlearn.erase(pipe, CIRCLE, AdvUnlearnConfig(**FAST, encoder_layers=[0, 7]))
    with pytest.raises(ErasureError, match="encoder_layers lists text-encoder layers"):
        AdvUnlearnConfig(module="unet-xattn", encoder_layers=[0])
    with pytest.raises(ErasureError, match="bank_size 1 is smaller than the 2 concepts: set it to at least 2"):
        advunlearn.erase(pipe, [Concept("circle"), Concept("square")], AdvUnlearnConfig(**{**FAST, "bank_size": 1}))
    with pytest.raises(ErasureError, match="set it to 0 with module unet-noxattn"):
        AdvUnlearnConfig(module="unet-noxattn", retain_embedding_weight=1.0)
    with pytest.raises(ErasureError, match="second_stage trains text_encoder, as the first stage does"):
        AdvUnlearnConfig(second_stage={"lr": 1e-4})
    with pytest.raises(ErasureError, match="second_stage.lr must be float"):
        AdvUnlearnConfig(second_stage={"module": "unet-noxattn", "lr": "fast"})
    with pytest.raises(ErasureError, match="second_stage: unknown key 'colour'"):
        AdvUnlearnConfig(second_stage={"module": "unet-noxattn", "colour": 1})
    with pytest.raises(ErasureError, match=r"encoder_layers lists.*\(override it in second_stage\)"):
        AdvUnlearnConfig(encoder_layers=[0], second_stage={"module": "unet-noxattn"})
    with pytest.raises(ErasureError, match="encoder_layers must be at least 0"):
        AdvUnlearnConfig(encoder_layers=[-1])
    with pytest.raises(ErasureError, match="attack_type must be one of 'prefix', 'replace', 'alternate'"):
        AdvUnlearnConfig(attack_type="replace_k")
    with pytest.raises(ErasureError, match="concept_synonyms must be a mapping of str to a list of str"):
        AdvUnlearnConfig(concept_synonyms={"circle": "disk"})
    with pytest.raises(ErasureError, match="no retain prompt"):
        advunlearn.erase(pipe, CIRCLE, AdvUnlearnConfig(**FAST, retain_prompts=str(only_circles)))
    with pytest.raises(ErasureError, match="float32"):
        advunlearn.erase(pipe.to(torch.float16), CIRCLE, AdvUnlearnConfig(**FAST))
