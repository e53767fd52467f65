"""95% intervals (``erasure.eval.intervals``): Wilson against a reference implementation,
the bootstrap's coverage of what it estimates, and the intervals every summary carries."""

from __future__ import annotations

import numpy as np
import pytest

from erasure.eval.intervals import bootstrap, mean_interval, overlap, paired_change, wilson
from erasure.eval.metrics.accuracy import accuracy_record, accuracy_summary
from erasure.eval.prompts import PromptRow
from erasure.eval.tables import fmt_interval

# statsmodels 0.15.0, statsmodels.stats.proportion.proportion_confint(k, n, alpha=0.05, method="wilson"),
# computed once in a scratch environment (statsmodels is not a dependency), as fractions.
STATSMODELS_WILSON = {
    (0, 10): (0.0, 0.27753279986288926),
    (5, 10): (0.23659309051256394, 0.7634069094874361),
    (10, 10): (0.7224672001371106, 1.0),
    (0, 73): (0.0, 0.04999200795573113),
    (0, 72): (0.0, 0.05065117259645782),
    (1, 12): (0.014865094404917095, 0.35387991114111705),
    (3, 40): (0.025836025774588184, 0.1986423352431055),
    (57, 60): (0.8629948352365147, 0.9828504978356043),
}


@pytest.mark.parametrize("k, n", list(STATSMODELS_WILSON))
def test_wilson_matches_statsmodels(k, n):
    low, high = STATSMODELS_WILSON[k, n]
    assert wilson(k, n) == pytest.approx([100 * low, 100 * high], abs=1e-9)


def test_73_images_bound_an_empty_cell_by_five_points_and_72_do_not():
    assert wilson(0, 73)[1] <= 5.0 < wilson(0, 72)[1]


def test_wilson_refuses_impossible_counts_and_has_no_interval_without_trials():
    assert wilson(0, 0) is None
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_bootstrap_is_reproducible_and_covers_a_known_mean():
    values = np.random.default_rng(1).normal(50.0, 10.0, size=400)
    low, high = mean_interval(values)
    assert mean_interval(values) == [low, high]  # fixed seed: same rows, same interval
    half = 1.96 * values.std(ddof=1) / np.sqrt(values.size)  # the normal approximation, valid at n = 400
    assert low == pytest.approx(values.mean() - half, abs=0.25) and high == pytest.approx(values.mean() + half, abs=0.25)
    assert bootstrap([[], [1.0]], lambda a, b: a - b) is None


def test_a_paired_change_cancels_what_the_rows_share():
    """Rows whose own spread (prompt and seed) dwarfs a 2-point drop: the two means'
    intervals overlap, the paired difference's lies below 0."""
    rng = np.random.default_rng(2)
    base = rng.normal(60.0, 8.0, size=60)
    erased = base - 2.0 + rng.normal(0.0, 1.0, size=60)
    paired = paired_change(dict(enumerate(base)), {**dict(enumerate(erased)), 99: 0.0})  # row 99: erased only
    assert paired["n"] == 60 and paired["value"] == pytest.approx(float(np.mean(erased - base)))
    assert overlap(mean_interval(base), mean_interval(erased))
    low, high = paired["interval"]
    assert -2.6 < low < paired["value"] < high < -1.4
    assert paired_change({0: 1.0}, {1: 1.0}) is None


def test_overlap():
    assert overlap([0, 5], [5, 9]) and not overlap([0, 4.9], [5, 9]) and overlap(None, [1, 2])


def test_a_number_is_shown_with_its_interval():
    assert fmt_interval(8.333, [2.31, 22.96]) == "8.3 [2.3-23]"
    assert fmt_interval(0.0, [0.0, 4.9992]) == "0.0 [0-5.0]"
    assert fmt_interval(100.0, [94.04, 100.0]) == "100.0 [94-100]"
    assert fmt_interval(12.0, None) == "12.0"
    assert fmt_interval(-2.0, [-5.04, 0.8]) == "-2.0 [-5.0 to 0.8]"


def _rows_and_records(spec):
    """spec: (type, class, predicted, phrasing) per row."""
    rows = [PromptRow(i, f"p{i}", i, label=label, type=kind, extra={"phrasing": phrasing} if phrasing else {})
            for i, (kind, label, _, phrasing) in enumerate(spec)]
    records = [accuracy_record(predicted, label, 0.9 if predicted == label else 0.1) for _, label, predicted, _ in spec]
    return rows, records


def test_summaries_carry_intervals_and_split_acc_e_by_phrasing():
    spec = ([("erased", "circle", "circle", "seen")] * 2 + [("erased", "circle", "none", "seen")] * 8
            + [("erased", "circle", "circle", "held-out")] * 5 + [("erased", "circle", "none", "held-out")] * 5
            + [("retained", "square", "square", "")] * 20 + [("synonym", "circle", "none", "")] * 10)
    summary = accuracy_summary(*_rows_and_records(spec))
    e = summary["erasure"]
    assert (e["acc_e"], e["acc_e_seen"], e["acc_e_held_out"]) == (35.0, 20.0, 50.0)
    assert e["acc_e_ci"] == wilson(7, 20) and e["acc_e_held_out_ci"] == wilson(5, 10)
    assert e["h_o_held_out"] == pytest.approx(100 * 3 / (1 / 0.5 + 1 / 1.0 + 1 / 1.0))
    assert e["h_o_ci"][0] <= e["h_o"] <= e["h_o_ci"][1]
    headline, intervals = summary["headline"], summary["headline_intervals"]
    assert headline["Acc_e (erased, held-out phrasings), top-1 %"] == 50.0
    assert set(intervals) == set(headline) and intervals["Acc_s (retained), top-1 %"] == wilson(20, 20)
    assert summary["groups"]["erased"]["phrasings"]["seen"]["n"] == 10


def test_pairs_groups_give_neighbour_far_and_their_harmonic_mean():
    spec = ([("erased", "red circle", "red circle", "")] * 1 + [("erased", "red circle", "none", "")] * 9
            + [("neighbour", "blue circle", "blue circle", "")] * 8 + [("neighbour", "blue circle", "none", "")] * 2
            + [("far", "green star", "green star", "")] * 10)
    e = accuracy_summary(*_rows_and_records(spec))["erasure"]
    assert (e["acc_e"], e["acc_neighbour"], e["acc_far"]) == (10.0, 80.0, 100.0)
    assert e["h_pairs"] == pytest.approx(100 * 3 / (1 / 0.9 + 1 / 0.8 + 1 / 1.0))
    assert e["acc_neighbour_ci"] == wilson(8, 10) and e["h_o"] is None
