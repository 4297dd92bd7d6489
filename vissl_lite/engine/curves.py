"""``curves.png``: every metric a run logged, against the optimizer step, one panel per metric.

The metrics are whatever ``metrics.jsonl`` holds, not a fixed list: the step records' loss,
gradient norm, learning rate, weight decay, throughput and the method's own numbers (SimCLR's
``pos_sim``, DINO's teacher temperature, the online linear head's loss and accuracy, ...), and the
epoch records' numbers (``epoch_loss`` and the online monitor's kNN accuracy, RankMe and linear
probe accuracy), the latter drawn with a marker per evaluation. A method or monitor that logs a
new number gets its panel without an edit here.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

NOT_METRICS = ("type", "step", "epoch")
COLUMNS = 4


def metric_series(records: List[Dict[str, Any]]) -> Dict[str, Tuple[str, List[int], List[float]]]:
    """``{metric: (record type, steps, values)}`` in the order the metrics first appear; a metric
    is a key other than type/step/epoch whose value is a number (a non-finite one, stored as the
    string "nan" or "inf", is kept as NaN)."""
    series: Dict[str, Tuple[str, List[int], List[float]]] = {}
    for record in records:
        kind = str(record.get("type", "step"))
        for key, value in record.items():
            if key in NOT_METRICS or isinstance(value, bool):
                continue
            number = _as_float(value)
            if number is None:
                continue
            if key not in series:
                series[key] = (kind, [], [])
            series[key][1].append(int(record.get("step", 0)))
            series[key][2].append(number)
    return series


def draw_curves(records: List[Dict[str, Any]]):
    """A matplotlib ``Figure`` (Agg, no display needed) with one panel per metric, or None."""
    series = metric_series(records)
    if not series:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(COLUMNS, len(series))
    rows = math.ceil(len(series) / cols)
    fig = Figure(figsize=(3.4 * cols, 2.6 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for i, (ax, (name, (kind, steps, values))) in enumerate(zip(axes, series.items())):
        style = dict(marker="o", ms=3) if kind == "epoch" else {}
        ax.plot(steps, values, lw=1.2, color=f"C{i % 10}", **style)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(series):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_curves(records: List[Dict[str, Any]], out: str | os.PathLike) -> Optional[Path]:
    """Draw ``records`` (``metrics.jsonl``'s) into the PNG ``out`` (written atomically)."""
    fig = draw_curves(records)
    if fig is None:
        return None
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, out)
    return out


def _as_float(value: Any) -> Optional[float]:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf"):
        return float("nan")
    return None
