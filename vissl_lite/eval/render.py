"""A document as a list of (kind, content) blocks, written as Markdown and as one HTML file.

The report (``eval/report.py``) and the comparison of runs (``eval/compare.py``) build blocks;
this module renders them. Kinds: ``h1``/``h2``/``h3`` (text), ``p`` (text), ``ul`` (list of
text), ``img`` ((caption, PNG path)) and ``table`` ((columns, rows of cell strings)). A cell
written ``**text**`` is emphasised (bold in both). The Markdown links each PNG by its path
relative to the document; the HTML embeds it as a base64 ``data:`` URI, so the HTML is one
self-contained file to send (no external link, script or style sheet).
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any, List, Tuple

Block = Tuple[str, Any]

STYLE = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
         "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;"
         "padding:2px 8px;text-align:left}img{max-width:100%}figcaption{font-size:90%}")


def fmt(value: Any) -> str:
    """A number as a report shows it (4 significant digits), anything else as text."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def _bold(cell: str) -> bool:
    return len(cell) > 4 and cell.startswith("**") and cell.endswith("**")


def to_markdown(blocks: List[Block], folder: Path) -> str:
    """Markdown; images are linked relative to ``folder`` (where the .md is written)."""
    out: List[str] = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {content}\n")
        elif kind == "p":
            out.append(f"{content}\n")
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in content) + "\n")
        elif kind == "img":
            caption, path = content
            rel = Path(os.path.relpath(Path(path).resolve(), Path(folder).resolve())).as_posix()
            out.append(f"![{caption}]({rel})\n\n*{caption}*\n")
        elif kind == "table":
            cols, rows = content
            lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
            out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def _cell(cell: str) -> str:
    return f"<b>{html.escape(cell[2:-2])}</b>" if _bold(cell) else html.escape(cell)


def data_uri(path: str) -> str:
    """The PNG file at ``path`` as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def to_html(blocks: List[Block], title: str) -> str:
    """One self-contained HTML page (PNG figures embedded as data URIs)."""
    e = html.escape
    body: List[str] = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{e(content)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{e(content)}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in content) + "</ul>")
        elif kind == "img":
            caption, path = content
            body.append(f'<figure><img src="{data_uri(path)}" alt="{e(caption)}">'
                        f"<figcaption>{e(caption)}</figcaption></figure>")
        elif kind == "table":
            cols, rows = content
            head = "".join(f"<th>{e(c)}</th>" for c in cols)
            rows_html = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>"
                                for row in rows)
            body.append(f"<table><tr>{head}</tr>{rows_html}</table>")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_documents(blocks: List[Block], folder: Path, stem: str, title: str) -> None:
    """``folder/<stem>.md`` and ``folder/<stem>.html``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.md").write_text(to_markdown(blocks, folder))
    (folder / f"{stem}.html").write_text(to_html(blocks, title))
