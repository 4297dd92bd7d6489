"""``vissl-lite eval report CHECKPOINT --data PATH``: every evaluator that applies, in one report.

Runs kNN (with the accuracy-vs-k curve), the fast linear probe (with its weight-decay sweep), the
risk decomposition of that same probe's error, the few-shot probe (1-25 images per class), RankMe (with the singular-value spectrum) and UMAP
clustering (with a 2-D scatter, when umap-learn is installed) on features extracted once, for the
checkpoint and for its random-init baseline (``eval/baseline.py``: same backbone, size and
evaluators), and writes into ``--report-dir``:

    report.md     the run (method, backbone, epochs, steps, images seen, data, image size) and its
                  training curves at the top, a summary, then one section per evaluator with the
                  baseline beside every number, and which evaluators were skipped and why
    report.html   the same as one self-contained file (figures embedded): the file to send
    results.json  every number of both encoders, the configuration, the data and the model ids
    *.png         the figures

Data without a test split or without labels (label -1) runs the label-free evaluators only.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from vissl_lite.numbers import tidy
from vissl_lite.errors import EvalError
from vissl_lite.eval.baseline import baseline_context
from vissl_lite.eval.evaluator import EvalContext, EvalResult, Evaluator
from vissl_lite.eval.plots import panel_plot
from vissl_lite.eval.render import Block, fmt, write_documents
from vissl_lite.eval.runs import Run
from vissl_lite.host_memory import reused_host_memory
from vissl_lite.registry import EVALUATORS

#: the evaluators a report runs, in this order
PARTS = ("knn", "linear", "risk", "fewshot", "rankme", "umap_cluster")
#: the number of each evaluator the summary shows (default: its first)
HEADLINE = {"linear": "linear_top1", "risk": "total_error", "fewshot": "fewshot_10shot_top1",
            "rankme": "rankme_train",
            "umap_cluster": "ami"}
BASE = "random init"


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


def run_parts(ctx: EvalContext, leave_out) -> Tuple[Dict[str, EvalResult], Dict[str, str],
                                                    Dict[str, float]]:
    """Every evaluator of ``PARTS`` that applies: (results, skipped with why, seconds)."""
    parts: Dict[str, EvalResult] = {}
    skipped: Dict[str, str] = {}
    seconds: Dict[str, float] = {}
    with reused_host_memory(ctx.device.type == "cpu"):   # kNN: 1.25x on 2 CPU cores
        for name in PARTS:
            reason = "left out with --skip" if name in leave_out else skip_reason(ctx, name)
            if reason:
                skipped[name] = reason
                continue
            t0 = time.time()
            try:
                parts[name] = EVALUATORS.get(name)().run(ctx)
            except EvalError as err:
                skipped[name] = f"failed: {err}"
            seconds[name] = round(time.time() - t0, 2)
    return parts, skipped, seconds


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _with_baseline(rows: List[Dict[str, Any]], base: Optional[List[Dict[str, Any]]]) -> Tuple[
        List[str], List[List[str]]]:
    """A table's columns and cells, with a ``(random init)`` column after each numeric one when
    the baseline has the same table (same rows by their first column)."""
    cols = list(rows[0])
    key = cols[0]
    paired = bool(base) and [r[key] for r in rows] == [r.get(key) for r in base]
    out_cols: List[str] = []
    for c in cols:
        out_cols.append(c)
        if paired and c != key and _numeric(rows[0][c]):
            out_cols.append(f"{c} ({BASE})")
    cells = []
    for i, r in enumerate(rows):
        line = []
        for c in cols:
            line.append(fmt(r[c]))
            if paired and c != key and _numeric(rows[0][c]):
                line.append(fmt(base[i].get(c)))
        cells.append(line)
    return out_cols, cells


def headline(name: str, result: EvalResult) -> Optional[str]:
    key = HEADLINE.get(name)
    return key if key in result.metrics else next(iter(result.metrics), None)


def report_blocks(header: Dict[str, Any], run: Optional[Dict[str, Any]], curves: Optional[str],
                  parts: Dict[str, EvalResult], base: Dict[str, EvalResult],
                  skipped: Dict[str, str], base_note: str) -> List[Block]:
    """The report as a list of (kind, content) blocks, rendered to Markdown and HTML alike."""
    title = "vissl-lite evaluation report"
    if run:
        title += f": {run['method']}, {run['backbone']}, {run['epochs']} epochs"
    blocks: List[Block] = [("h1", title)]
    if run:
        blocks += [("h2", "Run"), ("table", (["", ""], [[k, fmt(v)] for k, v in run.items()]))]
    if curves:
        blocks.append(("img", ("training curves (metrics.jsonl) against the step", curves)))
    blocks += [("h2", "Evaluation"), ("table", (["", ""], [[k, fmt(v)] for k, v in header.items()]))]
    if base_note:
        blocks.append(("p", base_note))
    summary = [[f"{name}: {key}", fmt(r.metrics[key]),
                fmt(base[name].metrics.get(key)) if name in base else "-"]
               for name, r in parts.items() if (key := headline(name, r))]
    if summary:
        blocks += [("h2", "Summary"), ("table", (["number", "this run", BASE], summary))]
    for name, result in parts.items():
        other = base.get(name)
        blocks.append(("h2", f"{name}: {EVALUATORS.describe(name)}"))
        rows = [[k, fmt(v), fmt(other.metrics.get(k)) if other else "-"]
                for k, v in result.metrics.items()]
        blocks.append(("table", (["metric", "this run", BASE], rows)))
        for table, table_rows in result.tables.items():
            if table_rows:
                blocks += [("h3", table), ("table", _with_baseline(
                    table_rows, other.tables.get(table) if other else None))]
        for caption, path in result.figures.items():
            blocks.append(("img", (caption, path)))
        for note in result.notes:
            blocks.append(("p", f"Note: {note}"))
    if skipped:
        blocks.append(("h2", "Skipped"))
        blocks.append(("ul", [f"{name}: {why}" for name, why in skipped.items()]))
    return blocks


def training_curves(ctx: EvalContext, folder: Path) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """The run's identity and a PNG of its curves (None, None for a checkpoint outside a run)."""
    path = ctx.info.get("path")
    if not path:
        return None, None
    run = Run(Path(path))
    panels = {metric: {run.name: series} for metric, series in run.curves().items()}
    figure = panel_plot(folder / "training_curves.png", panels, "step") if panels else None
    return run.identity, figure


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
        g.add_argument("--no-baseline", action="store_true",
                       help="leave out the random-init baseline (halves the time)")
        for name in PARTS:
            EVALUATORS.get(name).add_arguments(parser)

    def run(self, ctx: EvalContext) -> EvalResult:
        start = time.time()
        a = ctx.args
        folder = Path(a.report_dir)
        folder.mkdir(parents=True, exist_ok=True)
        ctx.figure_dir, ctx.figure_prefix = folder, ""
        parts, skipped, seconds = run_parts(ctx, a.skip)
        base: Dict[str, EvalResult] = {}
        base_ctx, why_not = (None, "left out with --no-baseline") if a.no_baseline else \
            baseline_context(ctx)
        if base_ctx is not None:
            base, _, _ = run_parts(base_ctx, set(a.skip) | set(skipped))
            base_note = (f"Baseline ({BASE}): {base_ctx.checkpoint}, the same backbone config, "
                         f"image size and evaluators, untrained.")
        else:
            base_note = f"No random-init baseline: {why_not}."
        run, curves = training_curves(ctx, folder)
        data = ctx.describe_data()
        header = {"checkpoint": ctx.checkpoint, "model id": ctx.info["model_id"],
                  "data": f"{data['path']} ({data['dataset']})",
                  "images": ", ".join(f"{data[k]} {k[4:]}" for k in ("num_train", "num_test") if k in data),
                  "image size": data["image_size"], "feature dim": data.get("feature_dim", "-"),
                  "device": str(ctx.device), "seconds": round(time.time() - start, 1),
                  "command": shlex.join(["vissl-lite", *sys.argv[1:]]) if sys.argv[1:] else "(Python)"}
        blocks = report_blocks(header, run, curves, parts, base, skipped, base_note)
        write_documents(blocks, folder, "report", "vissl-lite report")
        config = {k: v for k, v in vars(a).items() if k not in ("func", "command")}
        record = {"checkpoint": ctx.checkpoint, "model_id": ctx.info["model_id"], "run": run,
                  "data": data, "config": config, "device": str(ctx.device), "seconds": seconds,
                  "results": {n: r.metrics for n, r in parts.items()},
                  "tables": {n: r.tables for n, r in parts.items()},
                  "figures": {n: r.figures for n, r in parts.items()},
                  "extra": {n: r.extra for n, r in parts.items()}, "skipped": skipped,
                  "baseline": {"model_id": base_ctx.info["model_id"] if base_ctx else None,
                               "note": base_note,
                               "results": {n: r.metrics for n, r in base.items()},
                               "tables": {n: r.tables for n, r in base.items()}}}
        (folder / "results.json").write_text(json.dumps(tidy(record), indent=2, default=str) + "\n")
        summary = {f"{n}.{k}": v for n, r in parts.items() for k, v in r.metrics.items()}
        notes = [f"skipped {n}: {why}" for n, why in skipped.items()]
        return EvalResult(summary, notes=notes + [f"wrote {folder / 'report.md'}, report.html, "
                                                  f"results.json"], extra={"skipped": skipped})
