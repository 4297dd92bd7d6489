"""``vissl-lite eval report CHECKPOINT --data PATH``: every evaluator that applies, in one report.

Runs kNN (with the accuracy-vs-k curve), the fast linear probe, the risk decomposition, RankMe
(with the singular-value spectrum) and UMAP clustering (with a 2-D scatter, when umap-learn is
installed) on features extracted once, and writes into ``--report-dir``:

    report.md     tables and pictures, one section per evaluator, and which were skipped and why
    report.html   the same, self-contained apart from the PNGs beside it
    results.json  every number, the configuration, the data and the model id
    *.png         the figures

Data without a test split or without labels (label -1) runs the label-free evaluators only.
"""
from __future__ import annotations

import html
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from vissl_lite.numbers import tidy
from vissl_lite.errors import EvalError
from vissl_lite.eval.evaluator import EvalContext, EvalResult, Evaluator
from vissl_lite.registry import EVALUATORS

#: the evaluators a report runs, in this order
PARTS = ("knn", "linear", "risk", "rankme", "umap_cluster")

Block = Tuple[str, Any]


def skip_reason(ctx: EvalContext, name: str) -> Optional[str]:
    """Why evaluator ``name`` cannot run on this data, or None."""
    cls = EVALUATORS.get(name)
    reason = cls.unavailable()
    if reason:
        return reason
    if cls.needs_test and not ctx.has_split("test"):
        return f"needs a test split: {ctx.missing_reason('test')}"
    if cls.needs_labels and not all(ctx.has_labels(s) for s in ("train", "test")):
        return "needs labels, and the data has unlabelled images (label -1)"
    return None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def _metric_rows(metrics: Dict[str, Any]) -> List[List[str]]:
    return [[k, _fmt(v)] for k, v in metrics.items()]


def report_blocks(header: Dict[str, Any], parts: Dict[str, EvalResult],
                  skipped: Dict[str, str], figure_dir: Path) -> List[Block]:
    """The report as a list of (kind, content) blocks, rendered to Markdown and HTML alike."""
    blocks: List[Block] = [("h1", "vissl-lite evaluation report"),
                           ("table", (["", ""], [[k, _fmt(v)] for k, v in header.items()]))]
    for name, result in parts.items():
        blocks.append(("h2", f"{name}: {EVALUATORS.describe(name)}"))
        blocks.append(("table", (["metric", "value"], _metric_rows(result.metrics))))
        for title, rows in result.tables.items():
            if rows:
                blocks.append(("h3", title))
                cols = list(rows[0])
                blocks.append(("table", (cols, [[_fmt(r[c]) for c in cols] for r in rows])))
        for caption, path in result.figures.items():
            blocks.append(("img", (caption, str(Path(path).relative_to(figure_dir)))))
        for note in result.notes:
            blocks.append(("p", f"Note: {note}"))
    if skipped:
        blocks.append(("h2", "Skipped"))
        blocks.append(("ul", [f"{name}: {why}" for name, why in skipped.items()]))
    return blocks


def to_markdown(blocks: List[Block]) -> str:
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
            out.append(f"![{caption}]({path})\n\n*{caption}*\n")
        elif kind == "table":
            cols, rows = content
            lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
            out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def to_html(blocks: List[Block]) -> str:
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
            body.append(f'<figure><img src="{e(path)}" alt="{e(caption)}">'
                        f"<figcaption>{e(caption)}</figcaption></figure>")
        elif kind == "table":
            cols, rows = content
            head = "".join(f"<th>{e(c)}</th>" for c in cols)
            rows_html = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
                                for row in rows)
            body.append(f"<table><tr>{head}</tr>{rows_html}</table>")
    style = ("body{font-family:sans-serif;max-width:900px;margin:2em auto}"
             "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;"
             "padding:2px 8px;text-align:left}img{max-width:100%}figcaption{font-size:90%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>vissl-lite report"
            f"</title><style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


@EVALUATORS.register("report", help=f"every evaluator that applies ({', '.join(PARTS)}) in one "
                                    f"Markdown/HTML report with a results JSON")
class ReportEvaluator(Evaluator):
    """Run ``PARTS`` on one set of features and write the report (module docstring)."""

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("report")
        g.add_argument("--report-dir", default="eval_report",
                       help="folder for report.md, report.html, results.json and the figures")
        g.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="evaluators to leave out")
        for name in PARTS:
            EVALUATORS.get(name).add_arguments(parser)

    def run(self, ctx: EvalContext) -> EvalResult:
        start = time.time()
        folder = Path(ctx.args.report_dir)
        folder.mkdir(parents=True, exist_ok=True)
        ctx.figure_dir, ctx.figure_prefix = folder, ""
        parts: Dict[str, EvalResult] = {}
        skipped: Dict[str, str] = {}
        seconds: Dict[str, float] = {}
        for name in PARTS:
            reason = "left out with --skip" if name in ctx.args.skip else skip_reason(ctx, name)
            if reason:
                skipped[name] = reason
                continue
            t0 = time.time()
            try:
                parts[name] = EVALUATORS.get(name)().run(ctx)
            except EvalError as err:
                skipped[name] = f"failed: {err}"
            seconds[name] = round(time.time() - t0, 2)
        data = ctx.describe_data()
        header = {"checkpoint": ctx.checkpoint, "model id": ctx.info["model_id"],
                  "data": f"{data['path']} ({data['dataset']})",
                  "images": ", ".join(f"{data[k]} {k[4:]}" for k in ("num_train", "num_test") if k in data),
                  "image size": data["image_size"], "feature dim": data.get("feature_dim", "-"),
                  "device": str(ctx.device), "seconds": round(time.time() - start, 1),
                  "command": shlex.join(["vissl-lite", *sys.argv[1:]]) if sys.argv[1:] else "(Python)"}
        blocks = report_blocks(header, parts, skipped, folder)
        (folder / "report.md").write_text(to_markdown(blocks))
        (folder / "report.html").write_text(to_html(blocks))
        config = {k: v for k, v in vars(ctx.args).items() if k not in ("func", "command")}
        record = {"checkpoint": ctx.checkpoint, "model_id": ctx.info["model_id"], "data": data,
                  "config": config, "device": str(ctx.device), "seconds": seconds,
                  "results": {n: r.metrics for n, r in parts.items()},
                  "tables": {n: r.tables for n, r in parts.items()},
                  "figures": {n: r.figures for n, r in parts.items()},
                  "extra": {n: r.extra for n, r in parts.items()}, "skipped": skipped}
        (folder / "results.json").write_text(json.dumps(tidy(record), indent=2, default=str) + "\n")
        summary = {f"{n}.{k}": v for n, r in parts.items() for k, v in r.metrics.items()}
        notes = [f"skipped {n}: {why}" for n, why in skipped.items()]
        return EvalResult(summary, notes=notes + [f"wrote {folder / 'report.md'}, report.html, "
                                                  f"results.json"], extra={"skipped": skipped})
