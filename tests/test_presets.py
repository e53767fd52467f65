"""The authors' presets (configs/<method>/authors-*.yaml) and the options they need.

Each preset's resolved config is pinned in full: a later change of a default that a
preset relies on fails here, loudly. ``docs/equivalence.md`` has how each preset was
checked against the authors' code. The options are tested for what they do on tiny
pipelines.
"""

import dataclasses

import pytest
import torch

import erasure
from erasure.adapters import adapter_for
from erasure.cli import main as erase_main
from erasure.closed_form import adversarial_embedding
from erasure.concepts import Concept
from erasure.config import configs_dir
from erasure.errors import ErasureError
from erasure.methods import mace, rece, uce
from erasure.methods.mace import lora
from erasure.methods.rece import RECEConfig, choose_epoch, rece_epochs
from erasure.methods.esd import ESDConfig
from erasure.methods.uce import UCEConfig

pytestmark = pytest.mark.usefixtures("one_thread")

UCE_2023 = {
    "guide": "", "preserve": [], "preserve_file": None, "preserve_column": "artist", "preserve_empty": True,
    "lam": 0.5, "erase_scale": 1.0, "preserve_scale": None, "token_choice": "from_last_subject",
    "preserve_tokens": "all", "prompt_templates": ["{}"], "guide_templates": "never",
}
UCE_2025 = {
    **UCE_2023, "preserve_empty": False, "preserve_scale": 1.0, "token_choice": "last_subject",
    "preserve_tokens": "erased_span", "guide_templates": "always",
}
RECE_COMMON = {
    "uce": UCE_2023, "epochs": 1, "reg": 0.001, "embedding": "regzero", "lam": 0.1, "erase_scale": 1.0,
    "preserve_scale": 0.1, "empty_per_concept": False, "validate": "none", "validation_seeds": 4,
    "validation_prompts": None, "epoch_choice": "last", "validation_others": [], "others_tolerance": 10.0,
}
IMAGENETTE = ["tench", "English springer", "cassette player", "chain saw", "church", "French horn", "garbage truck",
              "gas pump", "golf ball", "parachute"]
MACE_COMMON = {
    "templates": "authors-object", "templates_file": None, "lam": 0.0, "preserve_scale_rule": "authors_code",
    "domain_weight": 0.0, "domain_concepts": [], "general_captions": "builtin", "general_equivalent_captions": 616767,
    "cache_dir": None, "train_steps": 50, "lora_rank": 1, "weight_decay": 0.01, "max_grad_norm": 1.0,
    "importance_sampling": True, "attention_loss": "norm", "end_tokens": "all", "images_per_concept": 8,
    "image_prompt": "a photo of the {}", "generation_steps": 30, "generation_guidance": 7.5, "resolution": 512,
    "generation_scheduler": "dpm_solver", "data_dir": None, "mask_source": "grounded_sam", "mask_threshold": 0.4,
    "mask_timesteps": [200, 400, 600], "grounding_model": "IDEA-Research/grounding-dino-tiny",
    "sam_model": "syscv-community/sam-hq-vit-huge", "grounding_label": None, "box_threshold": 0.3,
    "text_threshold": 0.25, "mask_boxes": "all", "seed": 2024,
}

ESD_2023 = dict(  # train-scripts/train-esd.py (CompVis), its argument defaults
    iterations=1000, lr=1e-5, negative_guidance=1.0, start_guidance=3.0, ddim_steps=50,
    sample_from="edited", target_base="anchor", parameter_rules="2023", erase_from=None,
    batch_size=1, latent_size=None, seed=0, mixed_precision="no", timestep_scheme="compvis-2023",
    refresh_every=1, bank_size=8,
)
ESD_2025 = dict(  # esd_sd.py (diffusers), its argument defaults and 1024 px
    iterations=200, lr=5e-5, negative_guidance=2.0, start_guidance=3.0, ddim_steps=50,
    sample_from="frozen", target_base="prompt", parameter_rules="2025", erase_from=None,
    batch_size=1, latent_size=128, seed=0, mixed_precision="bf16-pure", timestep_scheme="aligned",
    refresh_every=1, bank_size=8,
)
# Their --train_method is required: the concept type's config picks the variant.
ESD_VARIANTS = {"object": "esd-u", "nudity": "esd-u", "style": "esd-x", "celebrity": "esd-x"}

PINS = {
    ("uce", "authors-2023", "object"): UCE_2023,
    ("uce", "authors-2023", "style"): {**UCE_2023, "guide": "art"},
    ("uce", "authors-2025", "object"): UCE_2025,
    ("uce", "authors-2025", "style"): {**UCE_2025, "guide": "art"},
    ("rece", "authors-nudity", "nudity"): {
        **RECE_COMMON, "epochs": 3, "reg": 0.1, "empty_per_concept": True, "validate": "nudenet",
        "epoch_choice": "beats_sd_and_uce"},
    ("rece", "authors-object", "object"): {
        **RECE_COMMON, "validate": "resnet50", "epoch_choice": "beats_uce_keeps_others",
        "validation_others": IMAGENETTE},
    ("rece", "authors-artists", "style"): {**RECE_COMMON, "uce": {**UCE_2023, "guide": "art"}},
    ("mace", "authors-object", "object"): {
        **MACE_COMMON, "mapping": "ground", "lam": 1000.0, "preserve_scale": 0.0, "fuse_preserve_scale": 0.0,
        "learning_rate": 1e-5},
    ("mace", "authors-celebrity", "celebrity"): {
        **MACE_COMMON, "mapping": "a person", "preserve_scale": 1e-4, "fuse_preserve_scale": 1e-4,
        "domain_weight": 8e3, "learning_rate": 1e-4},
    ("mace", "authors-explicit", "nudity"): {
        **MACE_COMMON, "mapping": "a person wearing clothes", "preserve_scale": 7e-7, "fuse_preserve_scale": 7e-7,
        "train_steps": 120, "learning_rate": 1e-5, "importance_sampling": False},
    ("mace", "authors-style", "style"): {
        **MACE_COMMON, "templates": "authors-style", "mapping": "art", "preserve_scale": 1e-4,
        "fuse_preserve_scale": 1e-4, "domain_weight": 8e4, "learning_rate": 1e-4,
        "image_prompt": "a photo in the style of {}", "mask_source": "whole_image",
        "grounding_model": "IDEA-Research/grounding-dino-base", "sam_model": "facebook/sam-vit-huge",
        "mask_boxes": "best"},
    **{("esd", preset, concept_type): {**settings, "variant": variant}
       for preset, settings in (("authors-2023", ESD_2023), ("authors-2025", ESD_2025))
       for concept_type, variant in ESD_VARIANTS.items()},
}


@pytest.mark.parametrize("method, preset, concept_type", list(PINS))
def test_each_preset_resolves_to_its_pinned_config(method, preset, concept_type):
    resolved = dataclasses.asdict(erasure.resolve_config(method, concept_type, configs_dir() / method / f"{preset}.yaml"))
    expected = dict(PINS[method, preset, concept_type])
    if "domain_concepts" in expected:  # the concept type's list (celebrities, artists), pinned by its own file
        expected["domain_concepts"] = erasure.resolve_config(method, concept_type).domain_concepts
    assert resolved == expected


def test_every_authors_preset_is_pinned():
    shipped = {(path.parent.name, path.stem) for path in configs_dir().glob("*/authors-*.yaml")}
    assert shipped == {(method, preset) for method, preset, _ in PINS}


def test_the_esd_presets_differ_from_the_defaults_only_where_the_release_does():
    defaults = dataclasses.asdict(ESDConfig())
    differs = lambda preset: sorted(k for k, v in preset.items() if defaults[k] != v)  # noqa: E731
    assert differs(ESD_2023) == ["timestep_scheme"]
    assert differs(ESD_2025) == [
        "iterations", "latent_size", "lr", "mixed_precision", "negative_guidance", "parameter_rules", "sample_from",
        "target_base",
    ]


def test_uce_defaults_are_the_2023_code_that_made_the_papers_tables():
    assert dataclasses.asdict(UCEConfig()) == UCE_2023


# ---- the bundled model picks its own settings --------------------------------------------


def test_mini_sd_uses_its_own_settings_unless_a_config_is_given(tmp_path, capsys):
    esd_mini = erasure.resolve_config("esd", "object", model="mini-sd")
    assert (esd_mini.variant, esd_mini.iterations, esd_mini.lr, esd_mini.ddim_steps) == ("esd-x-strict", 400, 3e-3, 25)
    assert erasure.resolve_config("esd", "object").variant == "esd-u"  # SD 1.4's object settings elsewhere
    chosen = tmp_path / "mine.yaml"
    chosen.write_text("iterations: 7\n")
    mine = erasure.resolve_config("esd", "object", chosen, model="mini-sd")
    assert (mine.variant, mine.iterations) == ("esd-u", 7)
    assert erasure.resolve_config("uce", "object", model="mini-sd") == erasure.resolve_config("uce", "object")
    # The command line says which file it used (here before refusing to overwrite an output).
    existing = tmp_path / "out.safetensors"
    existing.write_bytes(b"")
    assert erase_main(["--method", "esd", "--concepts", "circle", "--model", "mini-sd", "--output", str(existing)]) == 2
    assert "using esd/mini-sd.yaml, the settings for mini-sd" in capsys.readouterr().out
    assert erase_main(["--method", "esd", "--concepts", "circle", "--model", "mini-sd", "--output", str(existing),
                       "--config", str(chosen)]) == 2
    assert "mini-sd.yaml" not in capsys.readouterr().out


# ---- UCE options ---------------------------------------------------------------------------


def _gram(vectors: torch.Tensor) -> torch.Tensor:
    vectors = vectors.double().reshape(-1, vectors.shape[-1])
    return vectors.T @ vectors


def test_preserve_tokens_all_takes_every_position_and_erased_span_the_picked_ones(sd1_pipe):
    adapter = adapter_for(sd1_pipe)
    prompt = "a red car"
    hidden, count = adapter.encode([prompt]).hidden[0], int(adapter.token_counts([prompt])[0])
    empty = adapter.encode([""]).hidden[0]
    every = uce.preservation_grams(adapter, [prompt], UCEConfig(preserve_tokens="all"))
    assert torch.allclose(every.keys, _gram(hidden) + _gram(empty), rtol=1e-10, atol=1e-10)
    # erased_span with the 2023 token choice: from the last word ("car", at count - 2) to the end.
    span = uce.preservation_grams(adapter, [prompt], UCEConfig(preserve_tokens="erased_span"))
    assert torch.allclose(span.keys, _gram(hidden[count - 2:]) + _gram(empty), rtol=1e-10, atol=1e-10)
    last = uce.preservation_grams(adapter, [prompt], UCEConfig(preserve_tokens="erased_span", token_choice="last_subject"))
    assert torch.allclose(last.keys, _gram(hidden[count - 2]) + _gram(empty[0]), rtol=1e-10, atol=1e-10)


def test_preserve_empty_false_removes_exactly_the_empty_prompt_term(sd1_pipe):
    adapter = adapter_for(sd1_pipe)
    with_empty = uce.preservation_grams(adapter, ["a red car"], UCEConfig())
    without = uce.preservation_grams(adapter, ["a red car"], UCEConfig(preserve_empty=False))
    empty = adapter.encode([""]).hidden[0]
    assert torch.allclose(with_empty.keys - without.keys, _gram(empty), rtol=1e-10, atol=1e-10)
    # Nothing preserved at all: the edit is UCE without a preservation term (s_p has no effect).
    a = erasure.erase(sd1_pipe, "uce", "airplane", preserve_empty=False, preserve_scale=1.0)
    b = erasure.erase(sd1_pipe, "uce", "airplane", preserve_empty=False, preserve_scale=5.0)
    c = erasure.erase(sd1_pipe, "uce", "airplane")
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert any(not torch.allclose(a.tensors[k], c.tensors[k]) for k in a.tensors)


@pytest.mark.parametrize("preserved, preserve_empty, expected", [
    (0, True, 1.0), (4, True, 0.2), (5, True, 1 / 6), (20, True, 0.1), (4, False, 0.25), (0, False, 1.0)])
def test_preserve_scale_null_is_the_2023_rule_counting_the_empty_prompt(sd1_pipe, preserved, preserve_empty, expected):
    preserve = [f"a photo of object {i}" for i in range(preserved)]
    edited = erasure.erase(sd1_pipe, "uce", "airplane", preserve=preserve, preserve_empty=preserve_empty)
    assert edited.extra["preserve_scale"] == pytest.approx(expected)
    explicit = erasure.erase(sd1_pipe, "uce", "airplane", preserve=preserve, preserve_empty=preserve_empty,
                             preserve_scale=expected)
    assert all(torch.equal(edited.tensors[k], explicit.tensors[k]) for k in edited.tensors)


@pytest.mark.parametrize("mode, guides", [
    ("never", ["", "", "art", "art"]),
    ("when_nonempty", ["", "", "art", "image of art"]),
    ("always", ["", "image of ", "art", "image of art"])])
def test_guide_templates(mode, guides):
    config = UCEConfig(prompt_templates=["{}", "image of {}"], guide_templates=mode)
    sources, targets = uce.concept_prompt_pairs([Concept("truck"), Concept("Van Gogh", "art")], config)
    assert sources == ["truck", "image of truck", "Van Gogh", "image of Van Gogh"]
    assert targets == guides


def test_preserve_file_reads_text_or_a_csv_column_without_the_erased_concepts(sd1_pipe, tmp_path):
    names = ["Claude Monet", "Van Gogh", "Frida Kahlo"]
    text = tmp_path / "artists.txt"
    text.write_text("\n".join(names) + "\n\n")
    table = tmp_path / "artists.csv"
    table.write_text("prompt,artist\n" + "".join(f"art by {n},{n}\nstyle of {n},{n}\n" for n in names))
    for path in (text, table):
        config = UCEConfig(preserve_file=str(path), preserve=["a red car"])
        assert uce.preserved_prompts([Concept("van gogh")], config) == ["a red car", "Claude Monet", "Frida Kahlo"]
    from_file = erasure.erase(sd1_pipe, "uce", "Van Gogh", preserve_file=str(table))
    listed = erasure.erase(sd1_pipe, "uce", "Van Gogh", preserve=["Claude Monet", "Frida Kahlo"])
    assert all(torch.equal(from_file.tensors[k], listed.tensors[k]) for k in listed.tensors)
    assert from_file.extra["preserve_scale"] == pytest.approx(1 / 3)
    with pytest.raises(ErasureError, match="no column 'name'.*preserve_column"):
        uce.preserved_prompts([], UCEConfig(preserve_file=str(table), preserve_column="name"))
    with pytest.raises(ErasureError, match="not found"):
        erasure.erase(sd1_pipe, "uce", "Van Gogh", preserve_file=str(tmp_path / "missing.csv"))


# ---- RECE options --------------------------------------------------------------------------


def test_empty_per_concept_weighs_the_empty_prompt_once_per_concept(sd1_pipe):
    adapter = adapter_for(sd1_pipe)
    concepts = [Concept("airplane"), Concept("violence"), Concept("harm")]
    per_concept = dict(rece_epochs(adapter, concepts, RECEConfig(epochs=2, validate="none", empty_per_concept=True)))
    # Only the empty prompt is preserved, so three copies of it = the re-edit's s_p times 3.
    scaled = dict(rece_epochs(adapter, concepts, RECEConfig(epochs=2, validate="none", preserve_scale=0.3)))
    once = dict(rece_epochs(adapter, concepts, RECEConfig(epochs=2, validate="none")))
    for epoch in (1, 2):
        for name, value in per_concept[epoch].items():
            assert torch.allclose(value.double(), scaled[epoch][name].double(), rtol=1e-9, atol=1e-12)
        assert any(not torch.allclose(per_concept[epoch][n], once[epoch][n]) for n in once[epoch])
    assert all(torch.equal(per_concept[0][n], once[0][n]) for n in once[0])  # the UCE start is not affected


def _objective(regulariser, c, tokens, guide, current, original, reg):
    fit = sum((c @ current[n].T - tokens @ original[n].T).pow(2).sum() for n in current)
    surrogate = sum((c @ current[n].T - tokens @ current[n].T).pow(2).sum() for n in current)
    concept = (c - tokens).pow(2).sum()
    penalty = {"zero": c.pow(2).sum(), "guide": (c - guide).pow(2).sum(), "outputs": surrogate, "concept": concept,
               "outputs_and_concept": surrogate + concept}[regulariser]
    return fit + reg * penalty


@pytest.mark.parametrize("regulariser", ["zero", "guide", "outputs", "concept", "outputs_and_concept"])
def test_each_embedding_regulariser_minimises_its_objective(sd1_pipe, regulariser):
    adapter = adapter_for(sd1_pipe)
    original = {k: v.detach().double() for k, v in adapter.cross_attention_weights().items()}
    current = {k: v.double() for k, v in erasure.erase(sd1_pipe, "uce", "airplane").tensors.items()}
    tokens, guide = adapter.encode(["airplane"]).hidden[0].double(), adapter.encode([""]).hidden[0].double()
    found = adversarial_embedding(current, original, tokens, 0.1, regulariser, guide=guide)
    c = found.detach().clone().requires_grad_(True)
    objective = _objective(regulariser, c, tokens, guide, current, original, 0.1)
    objective.backward()
    assert c.grad.abs().max() < 1e-8 * max(1.0, objective.item())
    if regulariser != "zero":
        assert not torch.allclose(found, adversarial_embedding(current, original, tokens, 0.1))


def test_rece_embedding_option_selects_the_regulariser(sd1_pipe):
    adapter = adapter_for(sd1_pipe)
    runs = {e: dict(rece_epochs(adapter, [Concept("airplane")], RECEConfig(validate="none", embedding=e)))[1]
            for e in rece.EMBEDDINGS}
    names = list(runs["regzero"])
    for embedding in ("standard", "surrogate", "surrogate_2nd", "surrogate_both"):
        assert any(not torch.allclose(runs[embedding][n], runs["regzero"][n]) for n in names)


def _scripted(scores: dict, others: dict | None = None):
    """Scorers reading a label planted in the weights: the candidates are dicts with a fake tensor."""
    calls = []

    def scorer(weights):
        calls.append(weights["which"])
        return scores[weights["which"]]

    def others_scorer(weights):
        return others[weights["which"]]

    return scorer, others_scorer, calls


def _candidates(count: int, computed: list):
    for epoch in range(count + 1):
        computed.append(epoch)
        yield epoch, {"which": "uce" if epoch == 0 else epoch}


@pytest.mark.parametrize("scores, chosen", [
    ({"uce": 0.0, 1: 0.3, 2: 0.5}, 1),          # the default keeps an adversarial epoch, even below UCE's score
    ({"uce": 0.4, 1: 0.3, 2: 0.3}, 1),          # ties keep the earlier (smaller) edit
    ({"uce": 0.4, 1: 0.3, 2: 0.1}, 2)])
def test_epoch_choice_best_picks_among_the_epochs(scores, chosen):
    scorer, _, calls = _scripted(scores)
    (epoch, _), history = choose_epoch(_candidates(2, []), "best", scorer, None, {"which": "sd"}, 10.0)
    assert epoch == chosen and calls == [1, 2]
    assert [h["model"] for h in history] == ["epoch 1", "epoch 2"]


@pytest.mark.parametrize("scores, chosen", [
    ({"sd": 0.1, "uce": 0.2, 1: 0.15, 2: 0.12}, 0),   # nothing beats SD: the user keeps UCE
    ({"sd": 0.9, "uce": 0.2, 1: 0.2, 2: 0.1}, 2),     # epoch 1 only ties UCE; epoch 2 beats both
    ({"sd": 0.9, "uce": 0.2, 1: 0.1, 2: 0.15}, 1)])
def test_epoch_choice_beats_sd_and_uce(scores, chosen):
    scorer, _, calls = _scripted(scores)
    (epoch, _), history = choose_epoch(_candidates(2, []), "beats_sd_and_uce", scorer, None, {"which": "sd"}, 10.0)
    assert epoch == chosen and sorted(map(str, calls)) == ["1", "2", "sd", "uce"]


def test_epoch_choice_beats_uce_keeps_others():
    # Epoch 1 erases more but the others drop 20 points (> 10): rejected; epoch 2 drops 5: kept.
    scorer, others, _ = _scripted({"uce": 50.0, 1: 20.0, 2: 30.0, 3: 60.0}, {"uce": 90.0, 1: 70.0, 2: 85.0, 3: 90.0})
    (epoch, _), history = choose_epoch(_candidates(3, []), "beats_uce_keeps_others", scorer, others, {}, 10.0)
    assert epoch == 2 and history[1] == {"model": "epoch 1", "score": 20.0, "others": 70.0}
    # Zero accuracy is taken at once, whatever the others, and no later epoch is computed.
    scorer, others, _ = _scripted({"uce": 50.0, 1: 0.0, 2: 0.0}, {"uce": 90.0, 1: 10.0, 2: 90.0})
    computed = []
    (epoch, _), _ = choose_epoch(_candidates(2, computed), "beats_uce_keeps_others", scorer, others, {}, 10.0)
    assert epoch == 1 and computed == [0, 1]
    # Nothing qualifies: the UCE start.
    scorer, others, _ = _scripted({"uce": 50.0, 1: 60.0}, {"uce": 90.0, 1: 90.0})
    assert choose_epoch(_candidates(1, []), "beats_uce_keeps_others", scorer, others, {}, 10.0)[0][0] == 0


def test_rece_returns_the_uce_start_when_the_rule_keeps_it(sd1_pipe):
    config = RECEConfig(epochs=2, validate="clip", epoch_choice="beats_sd_and_uce")
    adapter = adapter_for(sd1_pipe)
    original = {k: v.clone() for k, v in adapter.cross_attention_weights().items()}
    candidates = dict(rece_epochs(adapter, [Concept("airplane")], config))

    def scorer(weights):  # the original scores 1.0, UCE 0.5, the epochs worse than UCE
        if all(torch.equal(weights[n], original[n]) for n in original):
            return 1.0
        epoch = next(e for e, w in candidates.items() if all(torch.equal(w[n], weights[n]) for n in w))
        return {0: 0.5, 1: 0.7, 2: 0.6}[epoch]

    edit = rece.erase(sd1_pipe, [Concept("airplane")], config, scorer=scorer)
    assert edit.extra["chosen_epoch"] == 0
    assert all(torch.equal(edit.new["unet"][n], candidates[0][n]) for n in candidates[0])
    assert [s["model"] for s in edit.extra["scores"]] == ["uce", "sd", "epoch 1", "epoch 2"]


def test_rece_epoch_choice_settings_are_checked():
    with pytest.raises(ErasureError, match="epoch_choice beats_sd_and_uce compares scores"):
        RECEConfig(validate="none", epoch_choice="beats_sd_and_uce")
    with pytest.raises(ErasureError, match="needs validation_others"):
        RECEConfig(validate="resnet50", epoch_choice="beats_uce_keeps_others")
    assert RECEConfig(validate="none").epoch_choice == "best"  # unscored: the last epoch (see erase)


# ---- MACE options --------------------------------------------------------------------------

FAST = {"train_steps": 0, "general_equivalent_captions": None}


def test_authors_code_scale_rule_is_s_squared_in_stage_1_only(sd1_pipe, tmp_path):
    settings = {**FAST, "lam": 1.0, "cache_dir": str(tmp_path), "domain_weight": 2.0, "domain_concepts": ["dog"]}
    authors = erasure.erase(sd1_pipe, "mace", "cat", preserve_scale=0.3, preserve_scale_rule="authors_code", **settings)
    written_out = erasure.erase(sd1_pipe, "mace", "cat", preserve_scale=0.09, fuse_preserve_scale=0.3, **settings)
    paper = erasure.erase(sd1_pipe, "mace", "cat", preserve_scale=0.3, **settings)
    for name in authors.tensors:
        assert torch.allclose(authors.tensors[name].double(), written_out.tensors[name].double(), rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(authors.tensors[n], paper.tensors[n], rtol=1e-4) for n in paper.tensors)


def _authors_style_file(folder, count: int = 31):
    """A file shaped like the authors' src/cfr_utils.py, with templates of our own."""
    (folder / "src").mkdir()
    lines = ["def prompt_augmentation(content, augment=True, sampled_indices=None, concept_type='object'):",
             "    if concept_type == 'object':",
             "        prompts = ["]
    lines += [f"            ('object template {i} of {{}}'.format(content), content)," for i in range(count)]
    lines += ["        ]", "    elif concept_type == 'style':",
              "        prompts = [('{} style'.format(content), content)]", "    return prompts"]
    (folder / "src" / "cfr_utils.py").write_text("\n".join(lines) + "\n")


def test_authors_templates_are_read_from_the_users_checkout(tmp_path):
    _authors_style_file(tmp_path)
    config = mace.MACEConfig(templates="authors-object", templates_file=str(tmp_path))
    assert mace.templates_of(config) == [f"object template {i} of {{}}" for i in range(30)]  # their first 30
    single = mace.MACEConfig(templates="authors-style", templates_file=str(tmp_path / "src" / "cfr_utils.py"))
    assert mace.templates_of(single) == ["{} style"]
    with pytest.raises(ErasureError, match="templates_file=PATH/TO/MACE"):
        mace.templates_of(mace.MACEConfig(templates="authors-object"))
    with pytest.raises(ErasureError, match="no src/cfr_utils.py there"):
        mace.templates_of(mace.MACEConfig(templates="authors-object", templates_file=str(tmp_path / "nowhere")))


def test_dpm_solver_samples_the_training_images_and_the_pipeline_keeps_its_scheduler(sd1_pipe, monkeypatch):
    used = []
    real = lora.generate_latents
    monkeypatch.setattr(lora, "generate_latents", lambda pipe, *a, **k: used.append(type(pipe.scheduler).__name__)
                        or real(pipe, *a, **k))
    own = sd1_pipe.scheduler
    for kind in ("pipeline", "dpm_solver"):
        config = mace.MACEConfig(images_per_concept=1, generation_steps=2, mask_source="whole_image",
                                 generation_scheduler=kind)
        lora.training_data(sd1_pipe, adapter_for(sd1_pipe), mace.prompts_for(Concept("cat"), config), config,
                           torch.Generator().manual_seed(0))
        assert sd1_pipe.scheduler is own
    assert used == [type(own).__name__, "DPMSolverMultistepScheduler"]
