"""``vissl-lite eval transfer ENCODER --datasets flowers102,dtd,folder:/data/x``: transfer suite.

One command evaluates a frozen encoder on a list of data sets (``eval/transfer_sets.py``: each
with its own train/test protocol, named in the table). On each, the features of train and test
are extracted once (cached like every evaluator's) and the ``knn`` and ``linear`` evaluators run
on them as they are, with their own options (``--k``, ``--weight-decays``, ``--mode``, ...): the
numbers are those ``vissl-lite eval knn|linear`` gives on that data set alone. This is the
"linear evaluation on other data sets" of SimCLR (Chen et al. 2020, Table 8) and BYOL (Grill et
al. 2020, Table 3), and VISSL's benchmark suite, on features.

A data set that is not on disk (and not fetched: ``--download``) is left out with one line naming
the folder it belongs in; the suite goes on with the rest. Written into ``--transfer-dir``:

    transfer.md / transfer.html   the table (data set, protocol, sizes, kNN and linear top-1) and
                                  the bar chart; the HTML is one self-contained file
    transfer.png                  kNN and linear top-1 per data set
    results.json                  every number, the table and the configuration
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from vissl_lite.errors import DataError, EvalError
from vissl_lite.eval.evaluator import EvalContext, EvalResult, Evaluator
from vissl_lite.eval.plots import bar_chart
from vissl_lite.eval.render import fmt, write_documents
from vissl_lite.eval.transfer_sets import (BENCHMARKS, Loaded, add_root_arguments, data_root,
                                           load_benchmark)
from vissl_lite.numbers import tidy
from vissl_lite.registry import EVALUATORS

TABLE = "transfer: top-1 (%) per data set"
PROBES = ("knn", "linear")


def parse_datasets(text: str) -> List[str]:
    """The comma-separated list of ``--datasets``, checked (a typo is an error, not a skip)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS and not n.startswith("folder:")]
    if not names or unknown:
        raise EvalError(f"--datasets: unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
                        f"give a comma-separated list of {', '.join(BENCHMARKS)} or folder:PATH")
    return list(dict.fromkeys(names))


def evaluate_one(ctx: EvalContext, loaded: Loaded) -> Dict[str, Any]:
    """The ``knn`` and ``linear`` evaluators on one data set: its table row."""
    start = time.time()
    args = argparse.Namespace(**{**vars(ctx.args), "dataset": f"transfer:{loaded.name}",
                                 "data": loaded.name, "k_curve": []})
    sub = ctx.on_data(args, loaded.splits, loaded.data_ids)
    knn = EVALUATORS.get("knn")().run(sub).metrics
    linear = EVALUATORS.get("linear")().run(sub).metrics
    xtr = sub.features("train")[0]
    row: Dict[str, Any] = {"dataset": loaded.name, "protocol": loaded.protocol,
                           "classes": sub.num_classes(), "train": len(xtr),
                           "test": len(sub.features("test")[0])}
    for k in ctx.args.k:
        row[f"knn_top1@{k}"] = knn[f"knn_top1@{min(k, len(xtr))}"]
    row["linear_top1"] = linear["linear_top1"]
    row["seconds"] = round(time.time() - start, 1)
    row["source"] = loaded.source
    return row


@EVALUATORS.register("transfer", help="transfer suite: kNN and linear probe on many data sets "
                                      "(CIFAR-100, STL-10, Flowers-102, Pets, DTD, Food-101, "
                                      "Caltech-101, EuroSAT, folder:PATH), each with its own "
                                      "split protocol; one table and one bar chart")
class TransferEvaluator(Evaluator):
    """``knn`` and ``linear`` on each of ``--datasets`` (module docstring)."""

    needs_data = False

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("transfer")
        g.add_argument("--datasets", required=True,
                       help=f"comma-separated: {', '.join(BENCHMARKS)}, folder:PATH (an "
                            f"ImageFolder with train/ and test/, its .tar, or <class>/<image>)")
        add_root_arguments(g, "each named data set")
        g.add_argument("--transfer-dir", default="eval_transfer",
                       help="folder for transfer.md, transfer.html, transfer.png, results.json")
        for name in PROBES:
            EVALUATORS.get(name).add_arguments(parser)

    def run(self, ctx: EvalContext) -> EvalResult:
        start = time.time()
        a = ctx.args
        names = parse_datasets(a.datasets)
        root = data_root(a)
        rows: List[Dict[str, Any]] = []
        missing: Dict[str, str] = {}
        for name in names:
            try:
                loaded = load_benchmark(name, root, a.download, a.seed)
            except DataError as e:
                missing[name] = str(e)
                ctx.warn(f"transfer: {name} left out: {e}")
                continue
            rows.append(evaluate_one(ctx, loaded))
        if not rows:
            why = "; ".join(f"{n}: {w}" for n, w in missing.items())
            raise EvalError(f"transfer: none of the data sets could be read ({why})")
        metrics = {f"{r['dataset']}.{key}": r[key] for r in rows for key in r
                   if key.startswith(("knn_top1", "linear_top1"))}
        for key in [k for k in rows[0] if k.startswith(("knn_top1", "linear_top1"))]:
            metrics[f"mean.{key}"] = sum(r[key] for r in rows) / len(rows)
        notes = [f"{n} left out: {why}" for n, why in missing.items()]
        result = EvalResult(metrics, tables={TABLE: rows}, notes=notes,
                            extra={"missing": missing, "data_root": str(root)})
        self.write(ctx, result, Path(a.transfer_dir), time.time() - start)
        return result

    def write(self, ctx: EvalContext, result: EvalResult, folder: Path, seconds: float) -> None:
        """transfer.png, transfer.md/.html and results.json into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        rows = result.tables[TABLE]
        scores = [k for k in rows[0] if k.startswith(("knn_top1", "linear_top1"))]
        caption = "top-1 (%) per data set: kNN and linear probe on frozen features"
        result.figures[caption] = bar_chart(
            folder / "transfer.png", [r["dataset"] for r in rows],
            {k: [r[k] for r in rows] for k in scores}, "top-1 (%)", f"transfer: {ctx.checkpoint}")
        card = ctx.info["encoder"]["preprocessing"] if "encoder" in ctx.info else {}
        header = {"encoder": ctx.checkpoint, "model id": ctx.info["model_id"],
                  "preprocessing": ", ".join(f"{k} {v}" for k, v in card.items()),
                  "device": str(ctx.device), "seconds": round(seconds, 1),
                  "command": (shlex.join(["vissl-lite", *sys.argv[1:]]) if sys.argv[1:]
                              else "(Python)")}
        cols = list(rows[0])
        blocks = [("h1", f"vissl-lite transfer: {ctx.checkpoint}"),
                  ("table", (["", ""], [[k, fmt(v)] for k, v in header.items()])),
                  ("h2", TABLE), ("table", (cols, [[fmt(r[c]) for c in cols] for r in rows])),
                  ("img", (caption, result.figures[caption]))]
        if result.notes:
            blocks += [("h2", "Left out"), ("ul", result.notes)]
        write_documents(blocks, folder, "transfer", "vissl-lite transfer")
        config = {k: v for k, v in vars(ctx.args).items() if k not in ("func", "command")}
        record = {"evaluator": "transfer", "checkpoint": ctx.checkpoint,
                  "model_id": ctx.info["model_id"], "encoder": ctx.info.get("encoder"),
                  "config": config, "device": str(ctx.device), "seconds": round(seconds, 2),
                  **result.extra, "results": result.metrics, "tables": result.tables,
                  "figures": result.figures, "notes": result.notes}
        (folder / "results.json").write_text(json.dumps(tidy(record), indent=2, default=str) + "\n")
        result.notes.append(f"wrote {folder / 'transfer.md'}, transfer.html, transfer.png, "
                            f"results.json")
