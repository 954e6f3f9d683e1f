"""``ddsec zoo``: train and list populations of pretrained classifiers."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from ddsec.cli import common
from ddsec.cli import options as O
from ddsec.cli.launch import NPROC, relaunch
from ddsec.cli.render import out, percent, print_json, user_errors
from ddsec.distill import resolve_device
from ddsec.models_zoo.train import TrainRecipe
from ddsec.models_zoo.zoo import entry_name, list_populations, mean_accuracy, zoo_root

zoo = typer.Typer(help="Populations of pretrained classifiers (for poison and adapt).", no_args_is_help=True)


@zoo.command("train")
@user_errors
def train(
    dataset: str = typer.Option("digits", help="Dataset the models are trained on."),
    model: str = typer.Option("lenet", help="Registered model."),
    count: int = typer.Option(200, help="Models in the training population."),
    heldout: int = typer.Option(50, help="Models in the held-out population (disjoint seeds)."),
    name: Optional[str] = typer.Option(None, help="Zoo entry name (default <dataset>-<model>)."),
    steps: Optional[int] = typer.Option(None, help="Adam steps per model (default min(300, 10 epochs))."),
    batch_size: int = typer.Option(TrainRecipe.batch_size, help="Images per step."),
    lr: float = typer.Option(TrainRecipe.lr, help="Peak Adam learning rate (cosine decay)."),
    weight_decay: float = typer.Option(TrainRecipe.weight_decay, help="L2 penalty."),
    init: str = typer.Option(TrainRecipe.init, help="Initial-weight scheme: default | xavier | kaiming."),
    image_size: Optional[int] = typer.Option(None, help="Resize the images (default: the dataset's size)."),
    channels: Optional[int] = typer.Option(None, help="1 (grey) or 3 (RGB); default: the dataset's."),
    seed: int = typer.Option(0, help="First seed; held-out models use seeds from 1,000,000 on."),
    group: int = typer.Option(10, help="Models trained together and saved as one shard."),
    batching: str = typer.Option("auto", help="auto (vmap on GPU, loop on CPU) | vmap | loop."),
    root: Optional[str] = O.ZOO,
    data_dir: Optional[str] = O.DATA_DIR,
    device: str = O.DEVICE,
    download: bool = O.DOWNLOAD,
    nproc: int = NPROC,
    json_out: bool = O.JSON,
    quiet: bool = O.QUIET,
) -> None:
    """Train N + H classifiers with disjoint seeds (resumable: rerun the same command)."""
    relaunch(nproc)
    import time

    if batching not in ("auto", "vmap", "loop"):
        raise typer.BadParameter("must be auto, vmap or loop", param_hint="--batching")
    recipe = TrainRecipe(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, init=init)
    entry = name or entry_name(dataset, model)
    start = time.perf_counter()
    metas = common.train_with_bars(quiet=quiet, name=entry, dataset=dataset, model_name=model, count=count, heldout=heldout,
                            recipe=recipe, seed=seed, root=root, data_dir=data_dir, download=download, image_size=image_size,
                            channels=channels, device=resolve_device(device), group=group, batching=batching)
    seconds = time.perf_counter() - start
    table = Table(title=f"ddsec zoo train: {zoo_root(root) / entry}", title_justify="left")
    for column in ("population", "models", "test accuracy", "min"):
        table.add_column(column)
    for role, meta in metas.items():
        table.add_row(role, str(meta["count"]), percent(mean_accuracy(meta)), percent(min(meta["test_acc"])))
    out.print(table)
    out.print(f"{seconds:.1f} s")
    if json_out:
        print_json({"name": entry, "path": str(zoo_root(root) / entry), "seconds": round(seconds, 3),
                    "recipe": metas["train"]["recipe"],
                    **{role: {"count": m["count"], "acc_mean": mean_accuracy(m), "acc_min": min(m["test_acc"])}
                       for role, m in metas.items()}})


@zoo.command("list")
@user_errors
def list_(
    root: Optional[str] = O.ZOO,
    json_out: bool = O.JSON,
) -> None:
    """Show the populations stored in the zoo."""
    rows = list_populations(root)
    table = Table(title=f"ddsec zoo: {zoo_root(root)}", title_justify="left")
    for column in ("name", "population", "model", "dataset", "shape", "models", "test accuracy", "recipe"):
        table.add_column(column)
    for row in rows:
        done = f"{row['count']}" + (f" of {row['total']}" if row["total"] and row["total"] != row["count"] else "")
        recipe = row["recipe"] or {}
        table.add_row(row["name"], row["role"], row["model"], row["dataset"],
                      f"{row['in_chans']}×{row['image_size']}²", done, percent(mean_accuracy(row)),
                      " ".join(f"{k}={recipe[k]}" for k in ("steps", "batch_size", "lr") if k in recipe))
    out.print(table if rows else f"no populations in {zoo_root(root)}; train one with `ddsec zoo train`")
    if json_out:
        print_json({"root": str(zoo_root(root)), "populations": [
            {k: row[k] for k in ("name", "role", "path", "model", "dataset", "count", "total", "recipe")}
            | {"acc_mean": mean_accuracy(row)} for row in rows]})
