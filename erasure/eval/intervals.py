"""95% confidence intervals for the evaluator's numbers, all in percent.

- A proportion (top-1 accuracy, the share of images with a detection): the Wilson score
  interval (Wilson, 1927; ``statsmodels.stats.proportion.proportion_confint(method="wilson")``).
  Unlike the normal approximation it stays inside [0, 100] and is not empty at 0/n:
  with no image classified as the concept out of 73, the upper bound is 4.99%.
- A mean over rows (CLIP score, mean probability) and a function of several groups'
  rows (H_o): a percentile bootstrap over rows, each group resampled on its own
  (``BOOTSTRAP_RESAMPLES`` resamples, seed ``BOOTSTRAP_SEED``, so the same records always
  give the same interval).
- The change of a mean from the base model to the erased one (the report's change
  column): a percentile bootstrap of the mean of the rows' paired differences. Both
  images of a row share its prompt and seed, so this interval is narrower than the two
  means' intervals suggest, and it is the one that says whether a change is larger than
  its noise.

Rows are treated as independent draws; a set whose rows share prompts differs only in
seeds, so the intervals describe the variation over seeds and phrasings of that set, not
over other prompt sets.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

CONFIDENCE = 0.95
Z = 1.959963984540054  # the standard normal's 97.5% quantile
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
DESCRIPTION = (f"95% intervals: Wilson score for proportions (top-1 accuracies, shares of images); percentile "
               f"bootstrap over rows ({BOOTSTRAP_RESAMPLES:,} resamples, each group resampled on its own) for means "
               "(CLIP score, mean probability) and harmonic means (H_o); for the change column (erased - base) of a mean "
               "over rows, bootstrap over the rows' paired differences (a row's base and erased images share its "
               "prompt and seed)")


def wilson(successes: int, n: int) -> list[float] | None:
    """The Wilson score interval of ``successes`` out of ``n``, in percent; ``None`` for ``n = 0``.

    Args:
        successes: how many of the ``n`` trials succeeded (e.g. images classified as the class).
        n: the number of trials.
    """
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside 0..{n}")
    p, z2 = successes / n, Z * Z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # at 0/n and n/n the bound is exactly 0 or 100; rounding would leave 3e-15
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return [100.0 * low, 100.0 * high]


def bootstrap(groups: Sequence[Sequence[float]], statistic: Callable[..., float]) -> list[float] | None:
    """A percentile bootstrap interval of ``statistic(*group_means)``, resampling each group's rows.

    Args:
        groups: per group, one value per row (e.g. 0/1 for correct, a CLIP score).
        statistic: maps the groups' resampled means to the number whose interval is
            wanted (for a single mean: ``lambda m: m``).

    Returns:
        ``[low, high]`` in the statistic's own unit, or ``None`` when a group is empty.
    """
    arrays = [np.asarray(g, dtype=np.float64) for g in groups]
    if any(a.size == 0 for a in arrays):
        return None
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = [_resampled_means(a, rng) for a in arrays]
    values = np.array([statistic(*m) for m in zip(*means)])
    low, high = np.percentile(values, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return [float(low), float(high)]


def _resampled_means(values: np.ndarray, rng: np.random.Generator, chunk: int = 250) -> np.ndarray:
    """``BOOTSTRAP_RESAMPLES`` means of resamples of ``values``, drawn ``chunk`` at a time
    so that a set of thousands of rows needs no matrix of millions of indices."""
    out = []
    for start in range(0, BOOTSTRAP_RESAMPLES, chunk):
        rows = min(chunk, BOOTSTRAP_RESAMPLES - start)
        out.append(values[rng.integers(0, values.size, size=(rows, values.size))].mean(axis=1))
    return np.concatenate(out)


def mean_interval(values: Sequence[float]) -> list[float] | None:
    """The bootstrap interval of the mean of ``values`` (``None`` when there are none).

    Args:
        values: one number per row.
    """
    return bootstrap([values], lambda m: m)


def paired_change(base: Mapping[int, float], erased: Mapping[int, float]) -> dict | None:
    """The mean of ``erased - base`` over the rows both have, with its bootstrap interval
    over those rows: base and erased images share each row's prompt and seed, so the
    row-to-row spread that both share cancels (``None`` when no row has both).

    Args:
        base, erased: one value per row, by row index.
    """
    rows = sorted(base.keys() & erased.keys())
    if not rows:
        return None
    differences = [erased[r] - base[r] for r in rows]
    return {"value": float(np.mean(differences)), "interval": mean_interval(differences), "n": len(rows)}


def overlap(a: Sequence[float] | None, b: Sequence[float] | None) -> bool:
    """Whether two intervals share a point (an absent interval overlaps everything).

    Args:
        a, b: ``[low, high]`` or ``None``.
    """
    if a is None or b is None:
        return True
    return a[0] <= b[1] and b[0] <= a[1]
