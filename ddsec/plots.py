"""Pictures of results (matplotlib, drawn off-screen): a labelled heatmap of fractions, ROC curves.

People read a victims × metrics matrix (or a K × T sweep) faster as a picture than as a table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddsec._io import atomic_path


def heatmap(path: str | Path, values: np.ndarray, rows: list[str], columns: list[str], title: str, *,
            vmax: float = 1.0, decimals: int = 0) -> Path:
    """Write ``values`` (fractions, ``[len(rows), len(columns)]``, NaN for empty cells) as a PNG
    heatmap with every cell's percentage written in it (with ``decimals`` decimals); atomically.
    The colours span ``[0, vmax]`` (a smaller ``vmax`` tells small fractions apart, e.g. accuracy drops).

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    values = np.asarray(values, dtype=float)
    if values.shape != (len(rows), len(columns)):
        raise ValueError(f"values are {values.shape} but there are {len(rows)} rows and {len(columns)} columns")
    figure, axes = plt.subplots(figsize=(1.3 * len(columns) + 3.5, 0.42 * len(rows) + 1.6))
    image = axes.imshow(values, vmin=0.0, vmax=vmax, cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    axes.set_yticks(range(len(rows)), rows)
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            axes.text(j, i, f"{100 * value:.{decimals}f}", ha="center", va="center", fontsize=8,
                      color="black" if value > 0.6 * vmax else "white")
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, fraction=0.04)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
    return Path(path)


def roc_curves(path: str | Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> Path:
    """Write ROC curves (name → ``(fpr, tpr)`` arrays) as a PNG, false-positive rate on a log axis
    (a poison is a handful of samples among thousands: the low-FPR end is what matters); atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 5))
    for name, (fpr, tpr) in curves.items():
        axes.plot(np.clip(fpr, 1e-4, 1), tpr, label=name, drawstyle="steps-post")
    axes.set_xscale("log")
    axes.set_xlim(1e-4, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("false-positive rate (clean samples flagged)")
    axes.set_ylabel("true-positive rate (poison samples flagged)")
    axes.axvline(0.01, color="grey", lw=0.6, ls=":")
    axes.axvline(0.05, color="grey", lw=0.6, ls=":")
    axes.legend(fontsize=8, loc="lower right")
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
    return Path(path)
