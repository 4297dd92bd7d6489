"""``vissl-lite compare RUN_OR_RESULTS...``: runs side by side.

Each argument is a run folder (``vissl-lite pretrain``'s output_dir), a checkpoint inside one, or
a results JSON (``vissl-lite eval ... --out X.json`` or a report's ``results.json``; its
checkpoint's run folder is found when it exists). A run folder contributes its curves, its
config, the online monitor's last numbers and every results JSON inside it (one level deep).
Written into ``--out``:

    compare.md / compare.html   identities, the final numbers of every evaluator (one row per
                                number, one column per run, the best of each row in bold), the
                                config keys whose values differ, and the curves; the HTML is one
                                self-contained file
    curves_step.png, curves_time.png   loss and monitor metrics of all runs overlaid, against
                                the step and against training time (``eval/runs.py``)
    compare.json                every number above
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from vissl_lite.errors import EvalError
from vissl_lite.eval.plots import panel_plot
from vissl_lite.eval.render import Block, fmt, to_markdown, write_documents
from vissl_lite.eval.runs import Run

#: a number is better when lower if its name holds one of these
LOWER = ("loss", "error", "usability", "generalization", "approximation")
#: numbers that describe a setting, not a quality: never marked best
SETTINGS = ("weight_decay", "feature_dim", "heldout_size", "num_clusters", "components", "se_",
            "ci95", "candidates", "std_error")
SKIP_KEYS = ("output_dir",)


def _results_of(record: Dict[str, Any]) -> Dict[str, float]:
    """``evaluator.metric -> value`` of a results JSON (one evaluator's, or a report's)."""
    results = record.get("results") or {}
    if record.get("evaluator"):
        return {f"{record['evaluator']}.{k}": v for k, v in results.items() if _number(v)}
    return {f"{name}.{k}": v for name, metrics in results.items() if isinstance(metrics, dict)
            for k, v in metrics.items() if _number(v)}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "results" in record else None


class Entry:
    """One column of the comparison: a run (maybe without a folder) and its final numbers."""

    def __init__(self, spec: str):
        path = Path(spec).expanduser()
        self.numbers: Dict[str, float] = {}
        self.run: Optional[Run] = None
        if path.suffix == ".json":
            record = _read_json(path) if path.is_file() else None
            if record is None:
                raise EvalError(f"{spec} is not a results JSON (vissl-lite eval ... --out FILE, "
                                f"or a report's results.json)")
            checkpoint = record.get("checkpoint")
            if checkpoint and Path(checkpoint).exists():
                self.run = Run(Path(checkpoint))
            self.numbers.update(_results_of(record))
            self.name = self.run.name if self.run else path.stem
        else:
            self.run = Run(path)
            self.name = self.run.name
            for found in sorted([*path.glob("*.json"), *path.glob("*/*.json")]) if path.is_dir() else []:
                record = _read_json(found)
                if record is not None:
                    self.numbers.update(_results_of(record))
        if self.run:
            monitor = {f"monitor.{k}": v for k, v in self.run.final_monitor().items()}
            self.numbers = {**monitor, **self.numbers}


def flatten(config: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(configs: List[Dict[str, Any]]) -> Dict[str, List[Any]]:
    """key -> the value in each config, for the keys whose values differ (missing: None)."""
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    return {k: [f.get(k) for f in flat] for k in keys
            if k not in SKIP_KEYS and len({json.dumps(f.get(k), default=str) for f in flat}) > 1}


def best_columns(name: str, values: List[Optional[float]]) -> List[int]:
    """The columns holding the best value of a row, ties included (none for a setting, or with
    fewer than 2 values)."""
    metric = name.split(".", 1)[-1]
    present = [v for v in values if v is not None]
    if any(s in metric for s in SETTINGS) or len(present) < 2:
        return []
    best = min(present) if any(s in metric for s in LOWER) else max(present)
    return [i for i, v in enumerate(values) if v == best]


def numbers_table(names: List[str], numbers: List[Dict[str, float]]):
    """(columns, rows) with one row per number, the best of each row in ``**bold**``."""
    keys = list(dict.fromkeys(k for n in numbers for k in n))
    rows = []
    for key in keys:
        values = [n.get(key) for n in numbers]
        best = best_columns(key, values)
        rows.append([key] + [f"**{fmt(v)}**" if i in best else fmt(v) for i, v in enumerate(values)])
    return ["number", *names], rows


def merged(entries: List[Entry]) -> List[Entry]:
    """One entry per run folder: a results JSON given beside its run adds to the run's numbers."""
    out: List[Entry] = []
    for e in entries:
        same = [o for o in out if e.run and o.run and e.run.folder and o.run.folder
                and o.run.folder.resolve() == e.run.folder.resolve()]
        if same:
            same[0].numbers.update(e.numbers)
        else:
            out.append(e)
    return out


def unique_names(entries: List[Entry]) -> List[str]:
    names: List[str] = []
    for e in entries:
        name, i = e.name, 2
        while name in names:
            name, i = f"{e.name} ({i})", i + 1
        names.append(name)
    return names


def compare(specs: List[str], out: Path) -> Dict[str, Any]:
    """Write the comparison of ``specs`` into ``out`` (module docstring); returns compare.json."""
    if len(specs) < 2:
        raise EvalError("compare needs at least two runs or results files")
    entries = merged([Entry(s) for s in specs])
    names = unique_names(entries)
    out.mkdir(parents=True, exist_ok=True)
    blocks: List[Block] = [("h1", f"vissl-lite comparison of {len(entries)} runs")]
    runs = {n: e.run for n, e in zip(names, entries) if e.run}
    if runs:
        keys = list(next(iter(runs.values())).identity)
        blocks += [("h2", "Runs"), ("table", (["", *runs], [[k, *(fmt(r.identity[k]) for r in runs.values())]
                                                            for k in keys]))]
    cols, rows = numbers_table(names, [e.numbers for e in entries])
    blocks += [("h2", "Final numbers (best of each row in bold)"),
               ("table", (cols, rows)) if rows else ("p", "No numbers found.")]
    diffs = config_differences([r.config for r in runs.values()]) if len(runs) > 1 else {}
    blocks.append(("h2", "Config differences"))
    blocks.append(("table", (["key", *runs], [[k, *map(fmt, v)] for k, v in diffs.items()]))
                  if diffs else ("p", "None: the runs share every config value."))
    figures = {}
    for x, label in (("step", "step"), ("time", "training time (s)")):
        panels: Dict[str, Dict[str, Any]] = {}
        for name, run in runs.items():
            for metric, series in run.curves(x).items():
                panels.setdefault(metric, {})[name] = series
        if panels:
            figures[x] = panel_plot(out / f"curves_{x}.png", panels, label)
            blocks.append(("img", (f"training curves against the {label}", figures[x])))
    write_documents(blocks, out, "compare", "vissl-lite comparison")
    record = {"runs": names, "identity": {n: r.identity for n, r in runs.items()},
              "numbers": {n: e.numbers for n, e in zip(names, entries)},
              "config_differences": diffs, "figures": figures}
    (out / "compare.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def run_compare(args) -> int:
    out = Path(args.out)
    record = compare(list(args.runs), out)
    cols, rows = numbers_table(record["runs"], list(record["numbers"].values()))
    print(to_markdown([("table", (cols, rows))], out) if rows else "no numbers found")
    print(f"wrote {out / 'compare.md'}, compare.html, compare.json and the curves")
    return 0
