"""``ddsec show``: a distilled set's metadata, learned step sizes and image grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ddsec.cli.render import out, print_json, result_table, user_errors


@user_errors
def show(
    file: Path = typer.Argument(..., help="A distilled set (.safetensors) written by ddsec."),
    png: Optional[Path] = typer.Option(None, help="Where to write the image grid (default FILE with .png)."),
    scale: int = typer.Option(4, help="Pixel upscaling of the grid."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object as the last line of stdout."),
) -> None:
    """Print the metadata and step sizes, and write a PNG grid (one row per step)."""
    from ddsec.export import load_distilled, save_grid_png

    dset = load_distilled(file)
    meta = dset.meta
    grid = save_grid_png(png or file.with_suffix(".png"), dset.images, meta.mean, meta.std, scale=scale)
    details = {k: v for k, v in (("attack_class", meta.attack_class), ("target_class", meta.target_class),
                                 ("source", meta.source), ("target", meta.target)) if v is not None}
    rows = [
        ("task", meta.task), ("dataset", meta.dataset), ("model", meta.model), ("init", meta.init),
        ("shape", f"{dset.steps} steps × {meta.epochs} epochs × {dset.images_per_step} images "
                  f"{tuple(dset.images.shape[2:])}"),
        ("labels", "soft" if dset.soft_labels else "hard"), ("seed", str(meta.seed)),
        *((k, str(v)) for k, v in details.items()),
        ("step sizes", " ".join(f"{lr:.4g}" for lr in dset.lrs.tolist())),
        *(() if dset.momenta is None else (("momenta", " ".join(f"{m:.3f}" for m in dset.momenta.tolist())),)),
        ("image grid", str(grid)),
    ]
    out.print(result_table(f"ddsec show {file}", rows))
    if json_out:
        print_json({"file": str(file), "task": meta.task, "dataset": meta.dataset, "model": meta.model,
                    "init": meta.init, "steps": dset.steps, "epochs": meta.epochs, "ipc": meta.ipc,
                    "lrs": dset.lrs.tolist(), "momenta": None if dset.momenta is None else dset.momenta.tolist(),
                    "png": str(grid), "config": json.loads(json.dumps(meta.config)),
                    **details})
