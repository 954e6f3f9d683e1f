"""Pictures of results (matplotlib, drawn off-screen): a labelled heatmap of fractions.

People read a victims × metrics matrix (or a K × T sweep) faster as a picture than as a table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddsec._io import atomic_path


def heatmap(path: str | Path, values: np.ndarray, rows: list[str], columns: list[str], title: str) -> Path:
    """Write ``values`` (fractions in [0, 1], ``[len(rows), len(columns)]``, NaN for empty cells) as a
    PNG heatmap with every cell's percentage written in it; atomically.

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
    image = axes.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    axes.set_yticks(range(len(rows)), rows)
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            axes.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=8,
                      color="black" if value > 0.6 else "white")
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, fraction=0.04)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
    return Path(path)
