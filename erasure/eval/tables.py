"""Markdown tables for ``report.md``, shared by the report and the metrics' own tables:
numbers formatted alike everywhere, and a ``change`` column (erased - base) whenever a
table has both the base and the erased column."""

from __future__ import annotations


def fmt(value) -> str:
    """A number as the report shows it: one decimal from 1 up, three below, ``-`` for none."""
    if value is None:
        return "-"
    if isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 1 or value == 0 else f"{value:.3f}"
    return str(value)


def bound(value: float) -> str:
    """An interval's end as tables show it: two significant figures are enough (``2.3``, ``23``, ``100``)."""
    if value == 0:
        return "0"
    return f"{value:.1f}" if abs(value) < 10 else f"{value:.0f}"


def fmt_interval(value, interval) -> str:
    """A number with its 95% interval, ``8.3 [2.3-23]`` (``-2.0 [-5.0 to 0.8]`` when the
    interval starts below 0); the number alone when there is none.

    Args:
        value: the estimate.
        interval: ``[low, high]`` or ``None``.
    """
    if value is None or not interval:
        return fmt(value)
    between = " to " if interval[0] < 0 else "-"  # "-5.0-0.8" would read as a range of negatives
    return f"{fmt(value)} [{bound(interval[0])}{between}{bound(interval[1])}]"


def fmt_change(value, interval=None) -> str:
    """A change with its sign, and its 95% interval when there is one: ``+2``, ``-2.0 [-3.1 to -0.9]``."""
    return ("+" if value > 0 else "") + fmt_interval(value, interval)


def change(base, erased, paired: dict | None = None) -> str:
    """``erased - base`` with its sign, or ``-`` when either is not a number; with
    ``paired`` (``intervals.paired_change``), its value and 95% interval.

    Args:
        base, erased: the two numbers.
        paired: the paired difference, when the metric gives one per row.
    """
    if paired is not None:
        return fmt_change(paired["value"], paired["interval"])
    if not isinstance(base, (int, float)) or not isinstance(erased, (int, float)):
        return "-"
    delta = erased - base
    return fmt_change(float(delta) if isinstance(delta, float) else delta)


def has_change(variants: list[str]) -> bool:
    """The ``change`` column (erased - base) is shown when both variants are there."""
    return "base" in variants and "erased" in variants


def changes(values: dict, variants: list[str], paired: dict | None = None) -> list[str]:
    """``[erased - base]`` when the table has a change column, else nothing.

    Args:
        values: a number per variant.
        variants: the table's variant columns.
        paired: the paired difference with its interval, when there is one.
    """
    return [change(values.get("base"), values.get("erased"), paired)] if has_change(variants) else []


def table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """A titled markdown table (``### title``), as lines preceded by a blank line.

    Args:
        title: the heading.
        header: column names.
        rows: cells, already formatted.
    """
    lines = ["", f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]
