"""Prompt sets: the published CSVs read as they are, the bundled sets' structure, and
one-line errors for bad rows (seeds and guidance a pipeline cannot use)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from erasure.errors import ErasureError
from erasure.eval.prompts import list_bundled_sets, load_prompt_set, read_prompt_csv

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
    assert circle.counts() == {"erased": 12, "retained": 30, "synonym": 12}
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
