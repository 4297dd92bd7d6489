"""The evaluators' figures as PNG files (matplotlib's Agg canvas: no display, no global pyplot state).

matplotlib is imported inside each function, so importing an evaluator stays light.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch


def _figure(width: float = 5.0, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path)
    return str(path)


def line_plot(path: Path, x: Sequence[float], ys: dict, xlabel: str, ylabel: str, title: str,
              logx: bool = False, logy: bool = False) -> str:
    """One line per entry of ``ys`` (label -> values over ``x``)."""
    fig, ax = _figure()
    for label, y in ys.items():
        ax.plot(list(x), list(y), marker="o", markersize=3, label=label)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if len(ys) > 1:
        ax.legend()
    return _save(fig, path)


def histogram(path: Path, values: Sequence[float], xlabel: str, title: str, bins: int = 40) -> str:
    fig, ax = _figure()
    ax.hist(np.asarray(values, dtype=float), bins=bins, color="tab:blue", alpha=0.8)
    ax.set(xlabel=xlabel, ylabel="count", title=title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def scatter_2d(path: Path, points: np.ndarray, colours: np.ndarray, title: str,
               names: Optional[Sequence[str]] = None) -> str:
    """2-D points coloured by an integer label (-1: grey, e.g. HDBSCAN noise)."""
    fig, ax = _figure(5.6, 5.0)
    colours = np.asarray(colours)
    noise = colours < 0
    if noise.any():
        ax.scatter(points[noise, 0], points[noise, 1], s=4, c="lightgrey", label="noise")
    kinds = np.unique(colours[~noise])
    cmap = "tab10" if len(kinds) <= 10 else "tab20"
    sc = ax.scatter(points[~noise, 0], points[~noise, 1], s=4, c=colours[~noise], cmap=cmap,
                    vmin=0, vmax=max(int(kinds.max()) if len(kinds) else 0, 1))
    if names is not None and len(kinds) <= 20:
        handles, _ = sc.legend_elements(num=list(kinds))
        ax.legend(handles, [names[int(k)] for k in kinds], fontsize=6, markerscale=0.7,
                  loc="best", frameon=False)
    ax.set(title=title, xticks=[], yticks=[])
    return _save(fig, path)


def image_grid(path: Path, images: torch.Tensor, captions: Sequence[str], title: str,
               columns: int = 8) -> str:
    """Images (N, 3, H, W) in [0, 1] in a grid, each with a caption."""
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, _ = _figure(1.3 * columns, 1.45 * rows + 0.4)
    fig.clf()
    for i in range(n):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(images[i].clamp(0, 1).permute(1, 2, 0).numpy())
        ax.set_title(captions[i], fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def panel_plot(path: Path, panels: dict, xlabel: str, title: str = "", columns: int = 3) -> str:
    """One small plot per entry of ``panels`` (panel title -> {line label -> (xs, ys)}), lines of
    the same label in the same colour across panels; a legend when there are several labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(len(panels), 1)
    cols = min(columns, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows + (0.4 if title else 0)), dpi=100)
    FigureCanvasAgg(fig)
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    for i, (name, lines) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        for label, (xs, ys) in lines.items():
            ax.plot(list(xs), list(ys), lw=1.2, color=colours[label], label=label,
                    marker="o" if len(xs) < 12 else None, markersize=3)
        ax.set(xlabel=xlabel, title=name)
        ax.grid(alpha=0.3)
        if len(labels) > 1 and i == 0:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def bar_chart(path: Path, groups: Sequence[str], bars: dict, ylabel: str, title: str) -> str:
    """Grouped bars: one group per entry of ``groups``, one bar per entry of ``bars`` (label ->
    one value per group, None for none), each bar labelled with its value."""
    fig, ax = _figure(max(5.0, 0.9 * len(groups) * max(len(bars), 1) ** 0.5 + 2), 3.8)
    width = 0.8 / max(len(bars), 1)
    for i, (label, values) in enumerate(bars.items()):
        xs = [g + (i - (len(bars) - 1) / 2) * width for g in range(len(groups))]
        heights = [float("nan") if v is None else float(v) for v in values]
        drawn = ax.bar(xs, heights, width, label=label)
        ax.bar_label(drawn, fmt="%.1f", fontsize=6, padding=1)
    ax.set_xticks(range(len(groups)), list(groups), rotation=20, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(axis="y", alpha=0.3)
    if len(bars) > 1:
        ax.legend(fontsize=7)
    return _save(fig, path)
