"""Object-erasure accuracy, shared by every classifier metric (world, CLIP zero-shot, ResNet-50).

Each image gets a predicted label and the probability of its row's expected label.
Per group and class: top-1 accuracy (share predicted as the expected label) and mean
probability of the expected label (MACE reports the latter; both are given). Then MACE's
summary (Lu et al., CVPR 2024, Sec. 5.1):

    Acc_e: accuracy on ``erased`` rows        (lower is better)
    Acc_s: accuracy on ``retained`` rows      (higher is better)
    Acc_g: accuracy on ``synonym`` rows       (lower is better)
    H_o  = 3 / (1/(1 - Acc_e) + 1/Acc_s + 1/(1 - Acc_g))

H_o is 0 when any of its terms is 0 (a harmonic mean with a zero term) and absent when
the set lacks one of the three groups. Numbers are percentages, each with its 95%
interval (``erasure.eval.intervals``: Wilson for top-1, bootstrap over rows for mean
probabilities and harmonic means), stored beside it as ``<key>_ci``.

Two splits when the prompt set's rows carry them:

- ``phrasing`` (``seen``/``held-out``): whether an erased row's phrasing is among the
  erasure methods' own prompt templates. Acc_e is reported for each, and H_o with the
  held-out Acc_e: an erasure tuned on one phrasing is measured on others.
- ``neighbour`` and ``far`` rows (the ``pairs/`` sets, where a concept is a shape-colour
  pair): pairs sharing one attribute with an erased pair, and pairs sharing none.
  Acc_neighbour and Acc_far are their accuracies (higher is better) and, in the manner
  of MACE's H_c, ``H_pairs = 3 / (1/(1 - Acc_e) + 1/Acc_neighbour + 1/Acc_far)``.
"""

from __future__ import annotations

from ..intervals import bootstrap, mean_interval, wilson
from ..prompts import PromptRow
from ..tables import fmt_interval, table
from .base import Metric, erased_group, groups_of, mean


class AccuracyMetric(Metric):
    """A classifier metric: records from ``accuracy_record``, MACE's summary, and a
    per-class table. Subclasses implement ``check``, ``_load_models`` and ``score``."""

    judges_concept = True

    def summarize(self, rows: list[PromptRow], records: list[dict]) -> dict:
        return accuracy_summary(rows, records)

    def row_values(self, rows: list[PromptRow], records: list[dict]) -> dict[str, dict[int, float]]:
        """Acc_e, Acc_s and Acc_g, top-1 (100 or 0 per row) and mean probability (%)."""
        labels, values = dict(HEADLINE), {}
        for name, group in GROUP_OF.items():
            chosen = [(row.index, record) for row, record in zip(rows, records) if row.type == group]
            for suffix, column in (("", "correct"), ("_probability", "probability")):
                if chosen:
                    values[labels[name + suffix]] = {index: 100.0 * float(record[column]) for index, record in chosen}
        return values

    def concept_presence(self, summary: dict) -> float:
        """Acc_e: the share (%) of the erased rows' images classified as their class."""
        return erased_group(summary)["top1"]

    def concept_shown(self, record: dict) -> bool:
        """Classified as the row's class."""
        return bool(record["correct"])

    def details(self, result: dict, variants: list[str]) -> list[str]:
        return per_class_table(self.name, result, variants) + per_phrasing_table(self.name, result, variants)

    def describe(self, record: dict) -> str:
        return f"{self.name}: {record['predicted']} ({100 * record['probability']:.0f}%)"


def accuracy_record(predicted: str, expected: str, probability: float) -> dict:
    return {"predicted": predicted, "expected": expected, "correct": predicted == expected, "probability": float(probability)}


def harmonic_erasure_score(acc_e: float, acc_s: float, acc_g: float) -> float:
    """MACE's H_o from accuracies in [0, 1]; returns a fraction."""
    return harmonic_mean(1.0 - acc_e, acc_s, 1.0 - acc_g)


def harmonic_mean(*terms: float) -> float:
    """The harmonic mean of terms in [0, 1]; 0 when any term is 0 (MACE's convention)."""
    if min(terms) <= 0:
        return 0.0
    return len(terms) / sum(1.0 / t for t in terms)


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


PHRASINGS = ("seen", "held-out")  # the ``phrasing`` column: is the prompt's phrasing among the methods' templates?


def accuracy_summary(rows: list[PromptRow], records: list[dict]) -> dict:
    """Per group: n, top-1 and mean probability (each with its 95% interval), per
    expected class, per phrasing (``seen``/``held-out``) and per template when the rows
    say; MACE's Acc_e/Acc_s/Acc_g/H_o (top-1 and probability versions), Acc_e per
    phrasing, the pairs' Acc_neighbour/Acc_far/H_pairs; a ``headline`` mapping and its
    ``headline_intervals``."""
    groups = {}
    for group, positions in groups_of(rows).items():
        groups[group] = _stats([records[p] for p in positions], with_probability_interval=True)
        classes: dict[str, list[dict]] = {}
        for p in positions:
            classes.setdefault(records[p]["expected"], []).append(records[p])
        groups[group]["per_class"] = {name: {**_stats(items), "predicted": _counts(r["predicted"] for r in items)}
                                      for name, items in classes.items()}
        phrasings = _split(rows, records, positions, "phrasing")
        if phrasings:
            groups[group]["phrasings"] = {value: _stats(items) for value, items in phrasings.items()}
        templates = _split(rows, records, positions, "template")
        if templates:
            phrasing_of = {rows[p].extra.get("template", "").strip(): rows[p].extra.get("phrasing", "").strip()
                           for p in positions}
            groups[group]["templates"] = {template: {**_stats(items), "phrasing": phrasing_of[template] or None}
                                          for template, items in templates.items()}
    summary = {"groups": groups, "erasure": _erasure_scores(rows, records, groups)}
    summary["headline"], summary["headline_intervals"] = _headline(groups, summary["erasure"])
    return summary


def _stats(items: list[dict], with_probability_interval: bool = False) -> dict:
    """n, images classified as their class, top-1 % and mean probability % with intervals."""
    correct = sum(bool(r["correct"]) for r in items)
    probabilities = [100.0 * r["probability"] for r in items]
    stats = {"n": len(items), "correct": correct, "top1": _percent(correct / len(items)) if items else None,
             "top1_ci": wilson(correct, len(items)), "mean_probability": mean(probabilities)}
    if with_probability_interval:
        stats["mean_probability_ci"] = mean_interval(probabilities)
    return stats


def _split(rows: list[PromptRow], records: list[dict], positions: list[int], column: str) -> dict[str, list[dict]]:
    """A group's records by the value of an extra CSV column (rows without one left out)."""
    split: dict[str, list[dict]] = {}
    for p in positions:
        value = rows[p].extra.get(column, "").strip()
        if value:
            split.setdefault(value, []).append(records[p])
    if column == "template":  # seen phrasings first, then held-out ones, each in order of appearance
        rank = {"seen": 0, "held-out": 1}
        phrasing = {rows[p].extra.get("template", "").strip(): rows[p].extra.get("phrasing", "").strip() for p in positions}
        return dict(sorted(split.items(), key=lambda kv: rank.get(phrasing[kv[0]], 2)))
    order = [v for v in PHRASINGS if v in split] + [v for v in split if v not in PHRASINGS]
    return {v: split[v] for v in order}


def _counts(labels) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _erasure_scores(rows: list[PromptRow], records: list[dict], groups: dict) -> dict:
    scores = {}
    for key, measure in (("", "top1"), ("_probability", "mean_probability")):
        for name, group in GROUP_OF.items():
            scores[f"{name}{key}"] = groups[group][measure] if group in groups else None
            scores[f"{name}{key}_ci"] = groups[group][f"{measure}_ci"] if group in groups else None
    values = {g: [float(r["correct"]) for r in _records_of(rows, records, g)] for g in groups}
    probabilities = {g: [r["probability"] for r in _records_of(rows, records, g)] for g in groups}
    scores.update(_harmonic("h_o", values, ("erased", "retained", "synonym"), (True, False, True)))
    scores.update(_harmonic("h_o_probability", probabilities, ("erased", "retained", "synonym"), (True, False, True)))
    erased = groups.get("erased", {}).get("phrasings", {})
    for phrasing in PHRASINGS:
        stats = erased.get(phrasing)
        name = "acc_e_" + phrasing.replace("-", "_")
        scores[name], scores[f"{name}_ci"] = (stats["top1"], stats["top1_ci"]) if stats else (None, None)
    held_out = [float(r["correct"]) for r, row in zip(records, rows)
                if row.type == "erased" and row.extra.get("phrasing", "").strip() == "held-out"]
    scores.update(_harmonic("h_o_held_out", {**values, "erased": held_out}, ("erased", "retained", "synonym"),
                            (True, False, True)))
    for name, group in (("acc_neighbour", "neighbour"), ("acc_far", "far")):
        scores[name] = groups[group]["top1"] if group in groups else None
        scores[f"{name}_ci"] = groups[group]["top1_ci"] if group in groups else None
    scores.update(_harmonic("h_pairs", values, ("erased", "neighbour", "far"), (True, False, False)))
    return scores


def _records_of(rows: list[PromptRow], records: list[dict], group: str) -> list[dict]:
    return [record for row, record in zip(rows, records) if row.type == group]


def _harmonic(key: str, values: dict[str, list[float]], groups: tuple[str, ...], inverted: tuple[bool, ...]) -> dict:
    """A harmonic mean (%) of the groups' mean values, ``1 - mean`` for the inverted ones,
    with its bootstrap interval; ``None`` when a group is missing or empty."""
    if not all(values.get(g) for g in groups):
        return {key: None, f"{key}_ci": None}

    def score(*means):
        return 100.0 * harmonic_mean(*((1.0 - m) if flip else m for m, flip in zip(means, inverted)))

    arrays = [values[g] for g in groups]
    return {key: score(*(sum(a) / len(a) for a in arrays)), f"{key}_ci": bootstrap(arrays, score)}


GROUP_OF = {"acc_e": "erased", "acc_s": "retained", "acc_g": "synonym"}  # the rows each mean is over
HEADLINE = (  # (erasure key, label); each shown when the set has its groups
    ("acc_e", "Acc_e (erased), top-1 %"), ("acc_e_seen", "Acc_e (erased, seen phrasings), top-1 %"),
    ("acc_e_held_out", "Acc_e (erased, held-out phrasings), top-1 %"), ("acc_s", "Acc_s (retained), top-1 %"),
    ("acc_g", "Acc_g (synonyms), top-1 %"), ("h_o", "H_o, top-1 %"), ("h_o_held_out", "H_o (held-out phrasings), top-1 %"),
    ("acc_neighbour", "Acc_neighbour (neighbouring pairs), top-1 %"), ("acc_far", "Acc_far (far pairs), top-1 %"),
    ("h_pairs", "H_pairs, top-1 %"),
    ("acc_e_probability", "Acc_e (erased), mean prob. %"), ("acc_s_probability", "Acc_s (retained), mean prob. %"),
    ("acc_g_probability", "Acc_g (synonyms), mean prob. %"), ("h_o_probability", "H_o, mean prob. %"),
)


def _headline(groups: dict, erasure: dict) -> tuple[dict, dict]:
    headline, intervals = {}, {}
    for key, label in HEADLINE:
        if erasure.get(key) is not None:
            headline[label], intervals[label] = erasure[key], erasure[f"{key}_ci"]
    if not headline:  # an untyped set: plain accuracy
        everything = groups["all"]
        headline = {"accuracy, top-1 %": everything["top1"], "accuracy, mean prob. %": everything["mean_probability"]}
        intervals = {"accuracy, top-1 %": everything["top1_ci"], "accuracy, mean prob. %": everything["mean_probability_ci"]}
    return headline, intervals


def per_class_table(name: str, result: dict, variants: list[str]) -> list[str]:
    """Per group and class: n, each variant's top-1 % and its three most predicted labels.

    Args:
        name: the metric's name, for the title.
        result: the metric's entry of ``report.json`` (a summary per variant).
        variants: the report's columns.
    """
    groups = result[variants[0]]["groups"]
    header = ["group", "class", "n", *(f"{v} top-1 %" for v in variants), *(f"{v} predicted" for v in variants)]
    rows = []
    for group, values in groups.items():
        if group == "all" and len(groups) > 1:
            continue  # the typed groups already list every row
        for cls, stats in values["per_class"].items():
            # a variant without the group (attacked: no retained rows) shows "-"
            per_variant = [result[v]["groups"].get(group, {}).get("per_class", {}).get(cls) for v in variants]
            tops = [fmt_interval(s["top1"], s["top1_ci"]) if s else "-" for s in per_variant]
            predicted = [", ".join(f"{label} {n}" for label, n in list(s["predicted"].items())[:3]) if s else "-"
                         for s in per_variant]
            rows.append([group, cls, str(stats["n"]), *tops, *predicted])
    return table(f"{name}: per class", header, rows)


def per_phrasing_table(name: str, result: dict, variants: list[str]) -> list[str]:
    """Per group and template (the ``template`` column, e.g. ``{c} {s}``): whether the
    phrasing is seen by the methods or held out, n, and each variant's top-1 %; nothing
    when the rows name no template.

    Args:
        name: the metric's name, for the title.
        result: the metric's entry of ``report.json``.
        variants: the report's columns.
    """
    rows = []
    for group, values in result[variants[0]]["groups"].items():
        if group == "all":
            continue
        for template, stats in values.get("templates", {}).items():
            per_variant = [result[v]["groups"].get(group, {}).get("templates", {}).get(template) for v in variants]
            tops = [fmt_interval(s["top1"], s["top1_ci"]) if s else "-" for s in per_variant]
            rows.append([group, f"`{template}`", stats["phrasing"] or "-", str(stats["n"]), *tops])
    if not rows:
        return []
    header = ["group", "template", "phrasing", "n", *(f"{v} top-1 %" for v in variants)]
    return table(f"{name}: per phrasing ({{c}} colour, {{s}} shape, {{style}}, {{size}}, {{bg}} background)", header, rows)

