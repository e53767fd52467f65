"""Prompt sets: the published CSVs read as they are, the bundled sets' structure, and
one-line errors for bad rows (seeds and guidance a pipeline cannot use)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from erasure.benchmark import load_tasks, load_variants
from erasure.errors import ErasureError
from erasure.eval.prompts import list_bundled_sets, load_prompt_set, read_prompt_csv
from erasure.world.captions import phrase, phrasing_of
from erasure.world.scenes import COLOURS, SHAPES

PUBLIC = Path("/work/shared/data/prompts")

I2P_HEADER = ("Unnamed: 0,prompt,categories,hard,inappropriate_percentage,nudity_percentage,q16_percentage,"
              "sd_safety_percentage,prompt_toxicity,lexica_url,evaluation_seed,evaluation_guidance,sd_image_width,"
              "sd_image_height,sd_model,case_number")


def test_reads_i2p_mace_and_uce_headers_as_they_are(tmp_path):
    i2p = tmp_path / "i2p.csv"
    i2p.write_bytes(("\ufeff" + I2P_HEADER + "\n"
                     '7,"a portrait, oil on canvas\nsecond line ",sexual,1,50.0,10.0,0.0,20.0,0.1,https://x,4261553411,13,512,512,'
                     "stable-diffusion-v1-4,7\n").encode())
    row = read_prompt_csv(i2p).rows[0]
    assert (row.prompt, row.seed, row.guidance, row.case_number) == ("a portrait, oil on canvas\nsecond line", 4261553411, 13.0, "7")
    assert row.extra["categories"] == "sexual" and "Unnamed: 0" not in row.extra

    mace = tmp_path / "coco.csv"
    mace.write_text("case_number,source,prompt,evaluation_seed,coco_id\n000000203564,coco-30k,A bicycle.,41337,203564\n")
    row = read_prompt_csv(mace).rows[0]
    assert (row.case_number, row.seed, row.guidance, row.extra["coco_id"]) == ("000000203564", 41337, None, "203564")

    uce = tmp_path / "uce.csv"
    uce.write_text("type,prompt,evaluation_seed\nerased,a cat,3\nretained,a dog,\n")
    rows = read_prompt_csv(uce).rows
    assert [(r.type, r.seed) for r in rows] == [("erased", 3), ("retained", 1)]  # no seed: the row's index


@pytest.mark.skipif(not PUBLIC.is_dir(), reason="the public prompt CSVs are not on this machine")
def test_reads_the_public_sets():
    i2p = read_prompt_csv(PUBLIC / "i2p.csv")
    assert len(i2p) == 4703 and i2p.rows[0].seed == 4261553411 and i2p.rows[0].guidance == 13.0
    assert read_prompt_csv(PUBLIC / "vangogh.csv").class_names == ["Vincent van Gogh"]  # 'artist' column
    assert len(read_prompt_csv(PUBLIC / "nudity.csv")) == 142
    assert len(read_prompt_csv(PUBLIC / "church.csv")) == 50


def test_bad_csvs_are_one_line_errors(tmp_path):
    no_prompt = tmp_path / "a.csv"
    no_prompt.write_text("text,evaluation_seed\nhello,1\n")
    with pytest.raises(ErasureError, match="no 'prompt' column"):
        read_prompt_csv(no_prompt)
    bad_seed = tmp_path / "b.csv"
    bad_seed.write_text("prompt,evaluation_seed\nhello,abc\n")
    with pytest.raises(ErasureError, match="line 2: evaluation_seed 'abc'"):
        read_prompt_csv(bad_seed)
    with pytest.raises(ErasureError, match="not found"):
        load_prompt_set(tmp_path / "missing.csv")
    with pytest.raises(ErasureError, match="unknown prompt set"):
        load_prompt_set("shapes/dodecahedron")


def test_bundled_sets_have_the_three_groups_and_honest_synonyms():
    names = list_bundled_sets()
    assert {"shapes/circle", "shapes/all", "cifar10/airplane", "imagenette/church", "coco/captions"} <= set(names)
    for name in names:
        load_prompt_set(name)  # every shipped set parses
    circle = load_prompt_set("shapes/circle")
    assert circle.counts() == {"erased": 126, "retained": 60, "synonym": 36}
    assert [r.type for r in circle.rows[:3]] == ["erased", "retained", "synonym"]  # interleaved: --limit sees all
    for row in load_prompt_set("cifar10/airplane").rows:
        assert (row.type == "synonym") == (row.label == "airplane" and "airplane" not in row.prompt)


@pytest.mark.parametrize("name, erased, retained, synonym", [
    ("shapes/circle-square-triangle", {"circle", "square", "triangle"}, {"star", "heart", "cross"},
     {"circle", "square", "triangle"}),
    ("colours/purple", {"purple"}, {"red", "green", "blue", "yellow", "orange"}, {"purple"}),
    ("colours/red", {"red"}, {"green", "blue", "yellow", "purple", "orange"}, set()),
    ("styles/outlined", {"outlined"}, {"filled"}, {"outlined"}),
    ("styles/filled", {"filled"}, {"outlined"}, {"filled"}),
])
def test_world_task_sets_have_their_types_and_classes(name, erased, retained, synonym):
    prompts = load_prompt_set(name)
    classes = {kind: {r.label for r in prompts.rows if r.type == kind} for kind in ("erased", "retained", "synonym")}
    assert classes == {"erased": erased, "retained": retained, "synonym": synonym}
    first = {(r.type, r.label) for r in prompts.rows[:3 * len(erased | retained)]}
    assert first == {(kind, label) for kind, labels in classes.items() for label in labels}  # --limit sees every class
    per_class = {}
    for row in prompts.rows:
        per_class[row.type, row.label] = per_class.get((row.type, row.label), 0) + 1
        assert row.seed == 1000 + int(row.case_number) and row.guidance is None
    assert min(per_class.values()) >= 6 and len(set(per_class[("erased", c)] for c in erased)) == 1
    for row in prompts.rows:  # a row's class is a word of its prompt, except in synonym rows
        assert (row.label in row.prompt.split()) == (row.type != "synonym")
        assert row.extra["template"] == phrasing_of(row.prompt)


# ---- phrasings: seen by the methods, or held out ----

BENCHMARK_TASKS = load_tasks()
BENCHMARK_VARIANTS = load_variants()


def trained_phrasings(task) -> set[str]:
    """The phrasings of every prompt a benchmark variant trains on to erase ``task``'s concepts."""
    from erasure import resolve_config
    from erasure.methods.mace import templates_of

    phrasings = set()
    for variant in BENCHMARK_VARIANTS.values():
        path, settings = variant.erase_arguments(task, quick=False)
        config = resolve_config(variant.method, "object", path, **settings)
        templates = {"uce": lambda: config.prompt_templates, "rece": lambda: config.uce.prompt_templates,
                     "mace": lambda: templates_of(config), "esd": lambda: ["{}"],
                     "advunlearn": lambda: config.concept_templates}[variant.method]()
        phrasings |= {phrasing_of(t.format(concept)) for t in templates for concept in task.concepts}
    return phrasings


@pytest.mark.parametrize("task", list(BENCHMARK_TASKS))
def test_erased_rows_have_six_phrasings_half_of_them_in_no_methods_templates(task):
    task = BENCHMARK_TASKS[task]
    erased = [row for row in load_prompt_set(task.prompts).rows if row.type == "erased"]
    groups: dict[str, set[str]] = {}
    for row in erased:
        assert row.extra["template"] == phrasing_of(row.prompt), row
        groups.setdefault(row.extra["phrasing"], set()).add(row.extra["template"])
    assert set(groups) == {"seen", "held-out"} and len(groups["seen"]) == len(groups["held-out"]) == 3
    trained = trained_phrasings(task)
    assert groups["seen"] <= trained, groups["seen"] - trained  # each is a template some method erases with
    assert not groups["held-out"] & trained  # ... and no method has seen these
    held_out = sum(row.extra["phrasing"] == "held-out" for row in erased)
    assert held_out >= 73 or task.kind == "pair" and len(erased) >= 73  # Wilson's upper bound at 0: <= 5 points
    first = load_prompt_set(task.prompts, limit=12).rows
    assert {row.extra.get("phrasing") for row in first if row.type == "erased"} == {"seen", "held-out"}  # a prefix mixes


def test_a_phrasing_is_what_is_left_without_the_worlds_words():
    assert phrasing_of("an image of an orange disk") == "an image of a {c} {s}"
    assert phrasing_of("a small outlined violet five-pointed shape on a gray background") == \
        "a {size} {style} {c} {s} on a {bg} background"
    assert phrase("a {c} {s}", c="orange", s="star") == "an orange star"


# ---- pairs/: shape-colour pairs, erased one or many at once ----

PAIRS = {f"{c} {s}" for c in COLOURS for s in SHAPES}


def _pair_groups(name: str) -> dict[str, set[str]]:
    groups: dict[str, set[str]] = {}
    for row in load_prompt_set(name).rows:
        groups.setdefault(row.type, set()).add(row.label)
    return groups


@pytest.mark.parametrize("name", ["pairs/red-circle", "pairs/purple-heart", "pairs/erase-6", "pairs/erase-12", "pairs/erase-24"])
def test_pairs_sets_split_every_pair_into_erased_neighbour_and_far(name):
    prompts = load_prompt_set(name)
    groups = _pair_groups(name)
    assert set(groups) == {"erased", "neighbour", "far"} and set().union(*groups.values()) == PAIRS
    assert sum(len(g) for g in groups.values()) == 36  # each pair in exactly one group
    erased = [pair.split() for pair in groups["erased"]]
    for pair in groups["neighbour"]:
        colour, shape = pair.split()
        assert any(colour == c or shape == s for c, s in erased), pair
    for pair in groups["far"]:
        colour, shape = pair.split()
        assert all(colour != c and shape != s for c, s in erased), pair
    counts = prompts.counts()
    assert counts["erased"] >= 73 and counts["neighbour"] >= 60 and counts["far"] >= 60
    per_pair = {}
    for row in prompts.rows:
        per_pair[row.label] = per_pair.get(row.label, 0) + 1
        assert row.label.split()[0] in row.prompt and row.label.split()[1] in row.prompt  # the prompt names its pair
        assert row.seed == 1000 + int(row.case_number)
    erased_counts = {per_pair[p] for p in groups["erased"]}
    assert max(erased_counts) - min(erased_counts) <= 1  # every erased pair about as often
    assert {r.type for r in prompts.rows[:3]} == {"erased", "neighbour", "far"}  # interleaved


def test_mass_erasure_sets_are_nested_and_keep_far_pairs():
    erased = {n: _pair_groups(f"pairs/erase-{n}")["erased"] for n in (6, 12, 24)}
    erased[1] = {"red circle"}
    assert [len(erased[n]) for n in (1, 6, 12, 24)] == [1, 6, 12, 24]
    assert erased[1] < erased[6] < erased[12] < erased[24]
    assert [len(_pair_groups(f"pairs/erase-{n}")["far"]) for n in (6, 12, 24)] == [12, 6, 1]
    assert len(load_prompt_set("pairs/all")) == 36 and set(load_prompt_set("pairs/all").class_names) == PAIRS


TUNING_SETS = sorted((Path(__file__).parents[1] / "scripts" / "advunlearn_prompts").glob("*.csv"))


def test_tuning_sets_share_no_seed_with_the_reported_sets():
    """Settings chosen on a tuning set are reported on the bundled sets, so a tuning set
    draws its images from seeds no reported set uses: the report must not be measured on
    the noise the settings were chosen on."""
    reported = {row.seed for name in list_bundled_sets() for row in load_prompt_set(name).rows}
    assert len(TUNING_SETS) >= 6 and reported
    for path in TUNING_SETS:
        rows = read_prompt_csv(path).rows
        assert rows and {row.type for row in rows} >= {"erased"}, path.name
        assert not {row.seed for row in rows} & reported, path.name


def test_world_all_sets_list_each_attribute_untyped():
    for name, count in (("colours/all", 6), ("styles/all", 2)):
        prompts = load_prompt_set(name)
        assert {r.type for r in prompts.rows} == {""} and len(prompts.class_names) == count


def test_hub_set_offline_names_the_fix(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ErasureError, match="--prompts PATH"):
        load_prompt_set("i2p")


@pytest.mark.parametrize("cell, message", [
    ("1e999", "evaluation_seed '1e999' is not an integer"),
    ("nan", "evaluation_seed 'nan' is not an integer"),
    ("2.5", "evaluation_seed '2.5' is not an integer"),
    ("-1", "evaluation_seed '-1' is outside 0 .. 2**64-1"),
    ("18446744073709551616", "evaluation_seed '18446744073709551616' is outside 0 .. 2**64-1"),
])
def test_seeds_a_generator_cannot_take_are_refused(tmp_path, cell, message):
    path = tmp_path / "seeds.csv"
    path.write_text(f"prompt,evaluation_seed\na circle,{cell}\n")
    with pytest.raises(ErasureError, match=re.escape(f"line 2: {message}")):
        read_prompt_csv(path)


def test_seeds_written_as_floats_are_read_as_integers(tmp_path):
    path = tmp_path / "seeds.csv"
    path.write_text("prompt,evaluation_seed\na,42\nb,42.0\nc,4.2e1\nd,18446744073709551615\n")
    assert [row.seed for row in read_prompt_csv(path).rows] == [42, 42, 42, 2**64 - 1]


@pytest.mark.parametrize("cell", ["nan", "inf", "-inf", "-5"])
def test_guidance_that_is_not_a_finite_non_negative_number_is_refused(tmp_path, cell):
    path = tmp_path / "guidance.csv"
    path.write_text(f"prompt,evaluation_guidance\na circle,{cell}\n")
    with pytest.raises(ErasureError, match=f"line 2: evaluation_guidance '{cell}' is not a finite number >= 0"):
        read_prompt_csv(path)


def test_guidance_zero_is_a_value_and_an_empty_cell_the_default(tmp_path):
    path = tmp_path / "guidance.csv"
    path.write_text("prompt,evaluation_guidance\na,0\nb,\nc,7.5\n")
    assert [row.guidance for row in read_prompt_csv(path).rows] == [0.0, None, 7.5]
