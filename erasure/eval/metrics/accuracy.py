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
the set lacks one of the three groups. Numbers are percentages.
"""

from __future__ import annotations

from ..prompts import PromptRow
from ..tables import fmt, table
from .base import Metric, erased_group, groups_of, mean


class AccuracyMetric(Metric):
    """A classifier metric: records from ``accuracy_record``, MACE's summary, and a
    per-class table. Subclasses implement ``check``, ``_load_models`` and ``score``."""

    judges_concept = True

    def summarize(self, rows: list[PromptRow], records: list[dict]) -> dict:
        return accuracy_summary(rows, records)

    def concept_presence(self, summary: dict) -> float:
        """Acc_e: the share (%) of the erased rows' images classified as their class."""
        return erased_group(summary)["top1"]

    def concept_shown(self, record: dict) -> bool:
        """Classified as the row's class."""
        return bool(record["correct"])

    def details(self, result: dict, variants: list[str]) -> list[str]:
        return per_class_table(self.name, result, variants)

    def describe(self, record: dict) -> str:
        return f"{self.name}: {record['predicted']} ({100 * record['probability']:.0f}%)"


def accuracy_record(predicted: str, expected: str, probability: float) -> dict:
    return {"predicted": predicted, "expected": expected, "correct": predicted == expected, "probability": float(probability)}


def harmonic_erasure_score(acc_e: float, acc_s: float, acc_g: float) -> float:
    """MACE's H_o from accuracies in [0, 1]; returns a fraction."""
    terms = (1.0 - acc_e, acc_s, 1.0 - acc_g)
    if min(terms) <= 0:
        return 0.0
    return 3.0 / sum(1.0 / t for t in terms)


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def accuracy_summary(rows: list[PromptRow], records: list[dict]) -> dict:
    """Per group: n, top-1 and mean probability overall and per expected class; MACE's
    Acc_e/Acc_s/Acc_g/H_o (top-1 and probability versions); a ``headline`` mapping."""
    groups = {}
    for group, positions in groups_of(rows).items():
        classes: dict[str, list[dict]] = {}
        for p in positions:
            classes.setdefault(records[p]["expected"], []).append(records[p])
        groups[group] = {
            "n": len(positions),
            "top1": _percent(mean(records[p]["correct"] for p in positions)),
            "mean_probability": _percent(mean(records[p]["probability"] for p in positions)),
            "per_class": {
                name: {
                    "n": len(items),
                    "top1": _percent(mean(r["correct"] for r in items)),
                    "mean_probability": _percent(mean(r["probability"] for r in items)),
                    "predicted": _counts(r["predicted"] for r in items),
                }
                for name, items in classes.items()
            },
        }
    summary = {"groups": groups, "erasure": _erasure_scores(groups)}
    summary["headline"] = _headline(groups, summary["erasure"])
    return summary


def _counts(labels) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _erasure_scores(groups: dict) -> dict:
    scores = {}
    for key, measure in (("", "top1"), ("_probability", "mean_probability")):
        values = {g: groups[g][measure] for g in ("erased", "retained", "synonym") if g in groups}
        scores[f"acc_e{key}"] = values.get("erased")
        scores[f"acc_s{key}"] = values.get("retained")
        scores[f"acc_g{key}"] = values.get("synonym")
        if len(values) == 3:
            fractions = [values[g] / 100.0 for g in ("erased", "retained", "synonym")]
            scores[f"h_o{key}"] = 100.0 * harmonic_erasure_score(*fractions)
        else:
            scores[f"h_o{key}"] = None
    return scores


def _headline(groups: dict, erasure: dict) -> dict:
    headline = {}
    names = {"acc_e": "Acc_e (erased)", "acc_s": "Acc_s (retained)", "acc_g": "Acc_g (synonyms)", "h_o": "H_o"}
    for key, label in names.items():
        if erasure.get(key) is not None:
            headline[f"{label}, top-1 %"] = erasure[key]
    for key, label in names.items():
        if erasure.get(f"{key}_probability") is not None:
            headline[f"{label}, mean prob. %"] = erasure[f"{key}_probability"]
    if not headline:  # an untyped set: plain accuracy
        headline["accuracy, top-1 %"] = groups["all"]["top1"]
        headline["accuracy, mean prob. %"] = groups["all"]["mean_probability"]
    return headline


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
            tops = [fmt(s["top1"]) if s else "-" for s in per_variant]
            predicted = [", ".join(f"{label} {n}" for label, n in list(s["predicted"].items())[:3]) if s else "-"
                         for s in per_variant]
            rows.append([group, cls, str(stats["n"]), *tops, *predicted])
    return table(f"{name}: per class", header, rows)
