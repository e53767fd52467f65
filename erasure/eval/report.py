"""The evaluation report: ``report.json`` (every number and setting), ``report.md``
(the summary table, base vs erased, and attacked when asked for), ``report.html`` (the
images side by side, with per-image scores) and ``comparison.png`` (a picture of the
same: per prompt type, one strip of images per variant).

``report.json`` layout::

    {"format": "erasure-eval", "format_version": 1, "created": ...,
     "prompts": {"name", "source", "sha256", "rows", "groups"},
     "model": {"base": ..., "weights": {"path", "sha256", "method", "concepts", ...} | null},
     "generation": {steps, guidance_scale, resolution, dtype, scheduler, seeds},
     "versions": {...},
     "variants": ["base", "erased", "attacked"],
     "attack": {"method": "closed-form", "reg", "variant": "attacked", "rows", "types", ...} | null,
     "metrics": {name: {"settings": {...}, "base": summary, "erased": summary, "attacked": summary}},
     "images": [{"index", "case_number", "prompt", "class", "type", "seed", "guidance_scale",
                 "base": {"path": "base/00000.png", "<metric>": record}, "erased": {...},
                 "attacked": {...} (erased and synonym rows only)}]}

``attacked`` (``--attack``) covers only the attacked rows, so its summaries have no
``retained`` group (and no Acc_s or H_o); the ``change`` column is erased - base.

Every summary has a ``headline`` mapping (label -> number) which is what ``report.md``
tabulates; the rest (per group, per class) is for tables and for anyone reading the JSON.
"""

from __future__ import annotations

import html
import json
import platform
import time
from pathlib import Path

from ..atomic import atomic_write
from .prompts import PromptSet

FORMAT_VERSION = 1
HTML_IMAGES_PER_GROUP = 48  # enough to see what happened, light enough to open
GRID_IMAGES_PER_GROUP = 8  # the PNG is for a glance (and a README), the HTML for study


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("erasure", "torch", "diffusers", "transformers", "open_clip_torch", "nudenet", "accelerate"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def build_report(prompt_set: PromptSet, model: str, weights: dict | None, generation: dict, variants: list[str],
                 metrics: dict, images: list[dict], attack: dict | None = None) -> dict:
    """The content of ``report.json`` (layout in the module docstring).

    Args:
        prompt_set: the rows evaluated.
        model: the base model's name.
        weights: ``generate.weights_record`` of the erased weights, or ``None``.
        generation: the generation settings.
        variants: the image variants, in column order.
        metrics: per metric, its settings and a summary per variant.
        images: one entry per row, with each variant's path and records.
        attack: ``attack.attack_summary`` when an attacked variant was generated.
    """
    return {
        "format": "erasure-eval",
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "prompts": {"name": prompt_set.name, "source": prompt_set.source, "sha256": prompt_set.sha256,
                    "rows": len(prompt_set), "groups": prompt_set.counts()},
        "model": {"base": model, "weights": weights},
        "generation": generation,
        "versions": versions(),
        "variants": variants,
        "attack": attack,
        "metrics": metrics,
        "images": images,
    }


def write_report(output_dir: Path, report: dict, html_page: bool = True) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and (optionally) ``report.html`` and
    ``comparison.png``; return their paths."""
    paths = {"json": output_dir / "report.json", "markdown": output_dir / "report.md"}
    text = json.dumps(report, indent=2, sort_keys=False, default=str)
    atomic_write(paths["json"], lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    markdown = render_markdown(report)
    atomic_write(paths["markdown"], lambda tmp: Path(tmp).write_text(markdown, encoding="utf-8"))
    if html_page:
        paths["html"] = output_dir / "report.html"
        page = render_html(report)
        atomic_write(paths["html"], lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
        paths["grid"] = output_dir / "comparison.png"
        grid = render_grid(report, output_dir)
        atomic_write(paths["grid"], lambda tmp: grid.save(tmp, format="PNG"))
    return paths


# ---- markdown ----


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 1 or value == 0 else f"{value:.3f}"
    return str(value)


def _change(base, erased) -> str:
    if not isinstance(base, (int, float)) or not isinstance(erased, (int, float)):
        return "-"
    delta = erased - base
    return ("+" if delta > 0 else "") + _fmt(float(delta) if isinstance(delta, float) else delta)


def _has_change(variants: list[str]) -> bool:
    """The ``change`` column (erased - base) is shown when both are there."""
    return "base" in variants and "erased" in variants


def _changes(values: dict, variants: list[str]) -> list[str]:
    """``[erased - base]`` when the table has a change column, else nothing."""
    return [_change(values.get("base"), values.get("erased"))] if _has_change(variants) else []


def render_markdown(report: dict) -> str:
    variants = report["variants"]
    lines = ["# erase-eval report", ""]
    lines += _description(report)
    lines += ["", "## Summary", ""]
    header = ["metric", "quantity", *variants] + (["change"] if _has_change(variants) else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, result in report["metrics"].items():
        labels = list(dict.fromkeys(label for v in variants for label in result[v]["headline"]))
        for label in labels:
            values = {v: result[v]["headline"].get(label) for v in variants}
            cells = [name, label, *(_fmt(values[v]) for v in variants)] + _changes(values, variants)
            lines.append("| " + " | ".join(cells) + " |")
    for name, result in report["metrics"].items():
        lines += _per_class_table(name, result, variants)
        lines += _per_label_table(name, result, variants)
    lines += ["", "## Settings", ""]
    generation = ", ".join(f"{k} {v}" for k, v in report["generation"].items())
    lines.append(f"- generation: {generation}")
    for name, result in report["metrics"].items():
        lines.append(f"- {name}: `{json.dumps(result['settings'], sort_keys=True, default=str)}`")
    lines.append(f"- versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}")
    return "\n".join(lines) + "\n"


def _description(report: dict) -> list[str]:
    prompts, model = report["prompts"], report["model"]
    groups = ", ".join(f"{n} {g}" for g, n in prompts["groups"].items())
    lines = [f"- prompts: `{prompts['name']}` ({prompts['source']}), {prompts['rows']} rows ({groups})",
             f"- base model: `{model['base']}`"]
    weights = model.get("weights")
    if weights:
        where = f"`{weights['path']}`" if weights.get("path") else "in memory"
        lines.append(f"- erased weights: {where}, method {weights['method']}, concepts {', '.join(weights['concepts'])}, "
                     f"sha256 {weights['sha256'][:12]}")
    attack = report.get("attack")
    if attack:
        lines.append(f"- attacked: the erased model generating from RECE's closed-form adversarial embedding (reg "
                     f"{attack['reg']:g}) of each row's prompt; {attack['rows']} rows ({', '.join(attack['types'])}), "
                     "retained rows are not attacked")
    lines.append(f"- images: {', '.join(f'`{v}/`' for v in report['variants'])}; pairs share seeds; see report.html")
    return lines


def _per_class_table(name: str, result: dict, variants: list[str]) -> list[str]:
    """Per group and class top-1 accuracy, for classifier metrics (those with ``per_class``)."""
    first = result[variants[0]]
    groups = first.get("groups", {})
    if not groups or "per_class" not in next(iter(groups.values())):
        return []
    header = ["group", "class", "n", *(f"{v} top-1 %" for v in variants), *(f"{v} predicted" for v in variants)]
    lines = ["", f"### {name}: per class", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for group, values in groups.items():
        if group == "all" and len(groups) > 1:
            continue  # the typed groups already list every row
        for cls, stats in values["per_class"].items():
            # a variant without the group (attacked: no retained rows) shows "-"
            per_variant = [result[v]["groups"].get(group, {}).get("per_class", {}).get(cls) for v in variants]
            tops = [_fmt(s["top1"]) if s else "-" for s in per_variant]
            predicted = [", ".join(f"{label} {n}" for label, n in list(s["predicted"].items())[:3]) if s else "-"
                         for s in per_variant]
            lines.append("| " + " | ".join([group, cls, str(stats["n"]), *tops, *predicted]) + " |")
    return lines


def _per_label_table(name: str, result: dict, variants: list[str]) -> list[str]:
    """Detections per label over all rows, for detector metrics (those with ``detections``)."""
    everything = result[variants[0]].get("groups", {}).get("all", {})
    if "detections" not in everything:
        return []
    header = ["label", *variants] + (["change"] if _has_change(variants) else [])
    title = "all rows; attacked: its rows only" if "attacked" in variants else "all rows"
    lines = ["", f"### {name}: detections per label ({title})", "", "| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    for label in everything["detections"]:
        values = {v: result[v]["groups"]["all"]["detections"][label] for v in variants}
        lines.append("| " + " | ".join([label, *(str(values[v]) for v in variants)] + _changes(values, variants)) + " |")
    return lines


# ---- html ----


def render_html(report: dict, per_group: int = HTML_IMAGES_PER_GROUP) -> str:
    """One table per row group: prompt, then each variant's image and per-image scores."""
    variants = report["variants"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>erase-eval report</title><style>",
        "body{font-family:sans-serif;margin:1.5em} table{border-collapse:collapse} td,th{border:1px solid #ccc;"
        "padding:4px;vertical-align:top;font-size:13px} img{width:160px;height:160px;image-rendering:pixelated;"
        "object-fit:contain;background:#eee} .s{color:#555;font-size:12px}",
        "</style></head><body><h1>erase-eval report</h1>",
        "<pre>" + html.escape(render_markdown(report).split("## Settings")[0]) + "</pre>",
    ]
    for group, images in _by_group(report).items():
        shown = images[:per_group]
        parts.append(f"<h2>{html.escape(group)} ({len(images)} rows{', first ' + str(per_group) if len(images) > per_group else ''})</h2>")
        parts.append("<table><tr><th>#</th><th>prompt</th>" + "".join(f"<th>{html.escape(v)}</th>" for v in variants) + "</tr>")
        for image in shown:
            cells = [f"<td>{image['index']}</td>",
                     f"<td>{html.escape(image['prompt'])}<div class='s'>class {html.escape(image['class'] or '-')}, "
                     f"seed {image['seed']}, guidance {image['guidance_scale']}</div></td>"]
            for v in variants:
                entry = image.get(v)
                if entry is None:  # a variant without this row (attacked: retained rows)
                    cells.append("<td class='s'>not attacked</td>" if v == "attacked" else "<td>-</td>")
                    continue
                cells.append(f"<td><img src='{html.escape(entry.get('path', ''))}' loading='lazy'>"
                             f"<div class='s'>{html.escape(_image_scores(entry))}</div></td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_grid(report: dict, output_dir: Path, per_group: int = GRID_IMAGES_PER_GROUP, tile: int = 96):
    """Per prompt type, a labelled strip of its first rows' images for each variant
    (base, erased, attacked), tiles upscaled without smoothing so small images stay legible."""
    from PIL import Image, ImageDraw

    variants, label_width = report["variants"], 150
    strips = []  # (label, [image or None])
    for group, images in _by_group(report).items():
        shown = images[:per_group]
        for v in variants:
            if any(v in image for image in shown):
                strips.append((f"{group}: {v}", [image.get(v, {}).get("path") for image in shown]))
    columns = max((len(paths) for _, paths in strips), default=1)
    canvas = Image.new("RGB", (label_width + columns * tile, max(1, len(strips)) * tile), "white")
    draw = ImageDraw.Draw(canvas)
    for row, (label, paths) in enumerate(strips):
        draw.text((6, row * tile + tile // 2 - 6), label, fill="black")
        for column, path in enumerate(paths):
            if path and (output_dir / path).is_file():
                with Image.open(output_dir / path) as image:
                    tile_image = image.convert("RGB").resize((tile, tile), Image.Resampling.NEAREST)
                canvas.paste(tile_image, (label_width + column * tile, row * tile))
    return canvas


def _by_group(report: dict) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for image in report["images"]:
        groups.setdefault(image["type"] or "all", []).append(image)
    return groups


def _image_scores(entry: dict) -> str:
    """A short line per image: predicted labels, CLIP score, detections."""
    bits = []
    for name, record in entry.items():
        if name == "path" or not isinstance(record, dict):
            continue
        if "predicted" in record:
            bits.append(f"{name}: {record['predicted']} ({100 * record['probability']:.0f}%)")
        elif "clip_score" in record:
            bits.append(f"clip {record['clip_score']:.1f}")
        elif "detections" in record:
            bits.append(f"{name}: " + (", ".join(d["label"] for d in record["detections"]) or "none"))
    return "; ".join(bits)
