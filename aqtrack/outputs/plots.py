"""Figures of a run: training curves and a confusion matrix. The only module that imports matplotlib.

Figures are built as plain `matplotlib.figure.Figure` objects (no pyplot, no global state, never
shown): they render to PNG on any machine and display inline in Jupyter. Only measured values are
drawn. An epoch without a value is a gap in its line, never interpolated or filled in, and a metric
never measured says so on its panel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from aqtrack.names import (
    GRAD_NORM,
    GRAD_NORM_MAX,
    LR,
    TRAIN_ACC,
    TRAIN_LOSS,
    VAL_ACC,
    VAL_BALANCED_ACC,
    VAL_F1_MACRO,
    VAL_LOSS,
)
from aqtrack.outputs.alerts import EXPLOSION_FACTOR, VANISHING_FACTOR, thresholds
from aqtrack.training.scores import scores

DPI = 80
NOT_MEASURED = "not measured"
EXPLOSION_COLOR, VANISHING_COLOR, BAND_ALPHA = "tab:red", "tab:blue", 0.12
EXPLOSION_LABEL = f"exploding (> {EXPLOSION_FACTOR:g}x recent median)"
VANISHING_LABEL = f"vanishing (< early median / {VANISHING_FACTOR:g})"
# Panels: (title, y label, log scale, metric keys).
PANELS = (
    ("loss", "cross-entropy", False, (TRAIN_LOSS, VAL_LOSS)),
    (
        "accuracy, balanced accuracy, macro F1",
        "score",
        False,
        (TRAIN_ACC, VAL_ACC, VAL_BALANCED_ACC, VAL_F1_MACRO),
    ),
    ("gradient norm (pre-clip)", "L2 norm", True, (GRAD_NORM, GRAD_NORM_MAX)),
    ("learning rate", "lr", True, (LR,)),
)


@dataclass
class Curves:
    """Per-epoch metric values for epochs 1..N; NaN where an epoch has no value for a key."""

    epochs: list[int]
    series: dict[str, list[float]]

    @classmethod
    def from_points(cls, points: Mapping[str, Mapping[int, float | None]]) -> Curves:
        """From {key: {epoch: value}}; every epoch up to the last one any key has gets a slot."""
        last = max((e for steps in points.values() for e in steps), default=0)
        epochs = list(range(1, last + 1))
        return cls(epochs, {k: [_value(steps.get(e)) for e in epochs] for k, steps in points.items()})

    @classmethod
    def from_lists(cls, metrics: Mapping[str, Sequence[float | None]], epochs: Sequence[int]) -> Curves:
        """From lists aligned with `epochs` (a History's metrics, or a report's series)."""
        return cls.from_points({k: dict(zip(epochs, v, strict=False)) for k, v in metrics.items()})


def _value(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def training_curves(curves: Curves, title: str = "") -> Figure:
    """Loss, accuracy, gradient norm (log, with the explosion and vanishing bands) and lr (log)."""
    fig = Figure(figsize=(11, 7.5))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.07, top=0.91, wspace=0.28, hspace=0.18)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    x = np.asarray(curves.epochs, dtype=float)
    for ax, (name, ylabel, log, keys) in zip(axes, PANELS, strict=True):
        measured = [k for k in keys if np.isfinite(curves.series.get(k, [])).any()]
        for key in measured:
            marker = "." if len(x) < 30 else ""  # few epochs: a lone measured point between gaps shows
            ax.plot(x, np.asarray(curves.series[key], dtype=float), label=key, marker=marker)
        if log:
            ax.set_yscale("log")
        if key_missing := [k for k in keys if k not in measured]:
            ax.text(0.5, 0.5, f"{', '.join(key_missing)}: {NOT_MEASURED}", transform=ax.transAxes,
                    ha="center", va="center", color="gray")  # fmt: skip
        if name.startswith("gradient") and GRAD_NORM in measured:
            _threshold_bands(ax, x, [float(v) for v in curves.series[GRAD_NORM]])
        ax.set_title(name)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if measured:
            ax.legend(loc="upper right", fontsize="small")  # "best" searches placements: slow
    for ax in axes[2:]:
        ax.set_xlabel("epoch")
    if len(x):
        axes[0].set_xlim(0.5, x[-1] + 0.5)
    fig.suptitle(title or "training curves")
    return fig


def _threshold_bands(ax, x: np.ndarray, grad_norms: list[float]) -> None:
    """Shade what the gradient alerts call exploding and vanishing: above and below the run's own
    thresholds, epoch by epoch (see aqtrack.outputs.alerts), with every measured value and threshold in
    view."""
    limits = thresholds([None if math.isnan(v) else v for v in grad_norms])
    high = np.array([np.nan if h is None else h for h, _ in limits])
    low = np.array([np.nan if v is None else v for _, v in limits])
    finite = [v for v in (*grad_norms, *high, *low) if math.isfinite(v) and v > 0]
    bottom, top = (min(finite) / 3, max(finite) * 3) if finite else (1e-3, 1e2)
    if np.isfinite(high).any():
        ax.fill_between(
            x, high, top, step="mid", color=EXPLOSION_COLOR, alpha=BAND_ALPHA, label=EXPLOSION_LABEL
        )
    if np.isfinite(low).any():
        ax.fill_between(
            x, bottom, low, step="mid", color=VANISHING_COLOR, alpha=BAND_ALPHA, label=VANISHING_LABEL
        )
    ax.set_ylim(bottom, top)
    # This axis always spans decades, so its minor ticks carry no labels: not drawing them saves a
    # third of the figure's drawing time.
    ax.yaxis.set_minor_locator(NullLocator())


def confusion_matrix_figure(counts: np.ndarray, class_names: Sequence[str], title: str = "") -> Figure:
    """`counts[true, predicted]` as a heat map with the count in each cell."""
    counts = np.asarray(counts)
    k = len(class_names)
    fig = Figure(figsize=(1.2 * k + 3, 1.1 * k + 2), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(k), labels=class_names, rotation=30, ha="right")
    ax.set_yticks(range(k), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = counts.max() if counts.size else 0
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > top / 2 else "black")
    total = counts.sum()
    s = scores(counts)
    accuracy = (
        f"accuracy {s['acc']:.3f}, balanced {s['balanced_acc']:.3f} on {total}" if total else "no samples"
    )
    ax.set_title(f"{title or 'confusion matrix'}\n{accuracy}")
    return fig


def cv_folds_figure(folds: Sequence[int], scores: Mapping[str, Sequence[float]], title: str = "") -> Figure:
    """A cross-validation's folds side by side: one group of bars per fold (each key of `scores`, one
    value per fold), with each key's mean over the folds as a dashed line."""
    keys = list(scores)
    fig = Figure(figsize=(max(6.0, 0.9 * len(folds) + 3), 4.5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(keys))
    x = np.arange(len(folds), dtype=float)
    for i, key in enumerate(keys):
        values = np.asarray(scores[key], dtype=float)
        bars = ax.bar(x + (i - (len(keys) - 1) / 2) * width, values, width, label=key)
        if len(values):
            ax.axhline(float(np.mean(values)), color=bars.patches[0].get_facecolor(), ls="--", lw=1)
    ax.set_xticks(x, labels=[str(f) for f in folds])
    ax.set_xlabel("fold")
    ax.set_ylabel("score on the fold's test split")
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small", title="dashed: mean over folds", title_fontsize="small")
    ax.set_title(title or "cross-validation folds")
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path
