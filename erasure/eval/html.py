"""HTML for ``report.html``: the markdown that ``report.md`` holds, as a browser shows it.

The report's markdown uses a small subset (headings, pipe tables, bullet lists, plain
paragraphs, ``code`` and **bold**), so it is converted here line by line rather than
through a markdown package: tables become ``<table>`` elements, whose numeric cells
are right-aligned, and nothing is left as raw text in a preformatted block.
"""

from __future__ import annotations

import html
import re

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1240px;color:#222}
h1{font-size:24px} h2{font-size:19px;margin-top:28px;border-bottom:1px solid #ddd} h3{font-size:15px;margin-top:20px}
table{border-collapse:collapse;margin:6px 0 14px} td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px;vertical-align:top}
th{background:#f3f3f3;text-align:left} td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
.scroll{overflow-x:auto;max-width:100%} code{font-size:12px;background:#f5f5f5;padding:0 2px;word-break:break-all}
ul{padding-left:20px} li{margin:2px 0;font-size:14px} p{font-size:14px}
.images td{text-align:center} .images td.prompt{text-align:left;max-width:260px}
.images img{width:128px;height:128px;image-rendering:pixelated;object-fit:contain;background:#eee;display:block;margin:auto}
.s{color:#555;font-size:12px}
"""

_NUMBER = re.compile(r"^[-+]?(\d+(\.\d+)?|\*\*[-+]?\d+(\.\d+)?\*\*)( \[[-\d.]+-[-\d.]+\])?( tie)?$")


def page(title: str, body: list[str]) -> str:
    """A complete HTML document.

    Args:
        title: the page title and first heading.
        body: HTML fragments, in order.
    """
    head = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>")
    return "\n".join([head, *body, "</body></html>"]) + "\n"


def markdown_to_html(text: str) -> str:
    """The report's markdown subset as HTML: ``#``-headings (``##`` is ``<h2>``), pipe
    tables, ``- `` lists, paragraphs; inline ``code`` and **bold**.

    Args:
        text: markdown as ``render_markdown`` writes it.
    """
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_table(block))
            continue
        if line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        heading = re.match(r"^(#{1,4}) (.*)$", line)
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
        i += 1
    return "\n".join(out)


def inline(text: str) -> str:
    """Escape ``text`` and render its ``code`` spans and **bold** runs."""
    parts = re.split(r"(`[^`]*`)", text)
    rendered = []
    for part in parts:
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            rendered.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            rendered.append(re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(part)))
    return "".join(rendered)


def _table(block: list[str]) -> str:
    rows = [_cells(line) for line in block if not re.match(r"^\|[\s:|-]+\|$", line)]
    if not rows:
        return ""
    header, body = rows[0], rows[1:]
    parts = ["<div class='scroll'><table>", "<tr>" + "".join(f"<th>{inline(c)}</th>" for c in header) + "</tr>"]
    for cells in body:
        parts.append("<tr>" + "".join(_td(c) for c in cells) + "</tr>")
    parts.append("</table></div>")
    return "".join(parts)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _td(cell: str) -> str:
    numeric = _NUMBER.match(cell) or cell == "-"
    return f"<td class='num'>{inline(cell)}</td>" if numeric else f"<td>{inline(cell)}</td>"
