"""What several commands share: progress bars over stages, first-use zoo training, baselines.

Commands import from here (and from the library), never from one another.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING

from rich.table import Table

from ddsec.cli.render import err, percent, progress_bar
from ddsec.models_zoo.zoo import AUTO_COUNT, AUTO_HELDOUT, train_entry

if TYPE_CHECKING:
    from ddsec.baselines import BaselineResult, Report
    from ddsec.distill import DistillJob
    from ddsec.export import DistilledMeta, DistilledSet


class StageBars:
    """One rich progress bar per (baseline, stage), opened when that stage first reports."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.stack = ExitStack()
        self.key: tuple[str, str] | None = None
        self.update = lambda done, info="": None

    def reporter(self, kind: str) -> Report:
        """An ``on_progress(stage, done, total, info="")`` callback for baseline (or method) ``kind``."""

        def report(stage: str, done: int, total: int, info: str = "") -> None:
            if (kind, stage) != self.key:
                self.stack.close()
                self.key = (kind, stage)
                self.update = self.stack.enter_context(progress_bar(f"{kind}: {stage}", total, quiet=self.quiet))
            self.update(done, info)

        return report

    def close(self) -> None:
        """Close the open bar, if any."""
        self.stack.close()


def train_with_bars(quiet: bool = False, **kwargs) -> dict[str, dict]:
    """:func:`train_entry` with one progress bar per population (shared by poison and adapt)."""
    bars: dict[str, Callable[..., None]] = {}
    with ExitStack() as stack:
        def report(role: str, done: int, total: int) -> None:
            if role not in bars:
                stack.close()  # finish the previous population's bar
                bars[role] = stack.enter_context(progress_bar(f"training {role} models", total, quiet=quiet))
            bars[role](done, "model-steps")

        return train_entry(on_progress=report, **kwargs)


def train_on_first_use(name: str, *, dataset: str, model: str, quiet: bool, **kwargs) -> None:
    """Train the small default population ``name`` that ``poison`` or ``adapt`` needs, saying so."""
    err.print(f"no population {name!r} in the zoo yet: training {AUTO_COUNT} + {AUTO_HELDOUT} {model} models on"
              f" {dataset} once (use `ddsec zoo train` for larger populations)")
    train_with_bars(quiet=quiet, name=name, dataset=dataset, model_name=model, count=AUTO_COUNT,
                    heldout=AUTO_HELDOUT, **kwargs)


def run_baselines(dset: DistilledSet, job: DistillJob, kinds: tuple[str, ...], *, models: int, grid_models: int,
                  candidates: int, seed: int, quiet: bool) -> dict[str, BaselineResult]:
    """Evaluate each baseline on ``dset``'s run (same data, model and held-out ``p(θ0)``)."""
    from ddsec.baselines import run_baseline

    bars = StageBars(quiet)
    results: dict[str, BaselineResult] = {}
    try:
        for kind in kinds:  # random comes before optimized, which reuses its grid
            results[kind] = run_baseline(
                kind, model=job.model, heldout=job.heldout, train=job.train, test=job.test, steps=dset.steps,
                epochs=dset.meta.epochs, ipc=dset.meta.ipc, learned_lrs=dset.lrs, learned_momenta=dset.momenta,
                n_models=models, seed=seed,
                device=job.device, grid_models=grid_models, candidates=candidates,
                random_grid=results["random"].grid if "random" in results else None,
                on_progress=bars.reporter(kind))
    finally:
        bars.close()
    return results


def baseline_table(meta: DistilledMeta, summary: dict, baselines: dict[str, BaselineResult]) -> Table:
    """The distilled set's accuracy next to each baseline's (Table 1 of the paper)."""
    table = Table(title="distilled set vs baselines (step size and epochs selected on test images)",
                  title_justify="left")
    for column in ("method", "step size", "epochs", "models", "accuracy"):
        table.add_column(column, style="bold" if column == "method" else None)
    table.add_row("distilled (this file)", "learned", str(meta.epochs), str(summary["models"]),
                  percent(summary["acc_mean"], summary["acc_std"]))
    for kind, result in baselines.items():
        s = result.summary()
        method = "knn (random real)" if kind == "knn" else kind
        table.add_row(method, *("—" if s[k] is None else str(s[k]) for k in ("lr", "epochs", "models")),
                      percent(s["acc_mean"], s["acc_std"]))
        if "kmeans_knn_acc" in result.details:
            table.add_row("knn (k-means centroids)", "—", "—", "1", percent(result.details["kmeans_knn_acc"]))
    return table
