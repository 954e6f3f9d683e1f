"""``ddsec eval``: train held-out models with a distilled set and report their accuracy.

With ``--baseline KIND`` it also evaluates the paper's Table 1 baselines of the same size (see
:mod:`ddsec.baselines`) on the same held-out models.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ddsec.cli import options as O
from ddsec.cli.common import StageBars, baseline_table, run_baselines
from ddsec.cli.render import err, out, percent, print_json, print_notes, result_table, user_errors
from ddsec.errors import DDSecError

if TYPE_CHECKING:
    from ddsec.distill import DistillJob
    from ddsec.evaluate import EvalResult
    from ddsec.export import DistilledSet

BASELINE_HELP = ("Also evaluate a Table 1 baseline of the same size: random | optimized | kmeans | average | knn"
                 " | all (repeatable). FILE gives the dataset, model, init, steps, epochs, ipc and learned step sizes.")


@user_errors
def evaluate(
    file: Path = typer.Argument(..., help="A distilled set (.safetensors) written by ddsec."),
    models: Optional[int] = typer.Option(None, help="Held-out models, default 200 (fresh random inits; 1 for a fixed or pretrained init;"
                                         " baselines: random real draws, k-NN draws)."),
    per_step: bool = typer.Option(False, help="Also print the accuracy after every inner step."),
    data_dir: Optional[str] = typer.Option(None, help="Data root (default $DDSEC_DATA, else ~/.cache/ddsec/data)."),
    heldout_population: Optional[str] = typer.Option(None, help="Held-out population (sets distilled with --init population)."),
    seed: int = typer.Option(1, help="Seed of the held-out draws."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    baseline: Optional[list[str]] = typer.Option(None, help=BASELINE_HELP),
    grid_models: int = O.GRID_MODELS,
    candidates: int = O.CANDIDATES,
    protocol: Optional[str] = typer.Option(None, help="steps: replay the set as distilled; train-epochs: train fresh"
                                                     " models on its images for --epochs epochs (SGD, the DC/DSA/DM"
                                                     " protocol). Default: train-epochs for sets made by dc|dsa|dm."),
    epochs: Optional[int] = typer.Option(None, help="train-epochs: epochs per model (default the set's own: 1000 with augmentation, else 300)."),
    augment: Optional[str] = typer.Option(None, help="train-epochs: DSA operations while training (e.g."
                                                   " color_crop_cutout_scale_rotate), dc (DC's MNIST crop/scale/rotate)"
                                                   " or none; default the set's own."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object as the last line of stdout."),
) -> None:
    """Evaluate a distilled set exactly as distilled (step order, learned step sizes, epochs), or by training fresh models on it for a number of epochs."""
    from ddsec.baselines import check_kinds
    from ddsec.condense.protocol import PROTOCOLS, default_protocol, file_method
    from ddsec.distill import evaluate_distilled, prepare_eval
    from ddsec.evaluate import heldout_count

    kinds = check_kinds(baseline or [])
    if protocol is not None and protocol not in PROTOCOLS:
        raise DDSecError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    with err.status("loading the set and the data…"):
        dset, job = prepare_eval(file, data_dir=data_dir, heldout_population=heldout_population, device=device)
    models, note = heldout_count(models, job.heldout, flag="--models", default=200)
    print_notes([] if note is None else [note])
    meta = dset.meta
    chosen = protocol or default_protocol(meta.config)
    if chosen == "train-epochs":
        if per_step or kinds:
            raise DDSecError("--per-step and --baseline go with --protocol steps")
        result, rows = train_epochs(dset, job, models=models, epochs=epochs, augment=augment, seed=seed,
                                    quiet=quiet, chosen_by=("--protocol" if protocol else
                                                            f"default for a {file_method(meta.config)} set"))
    else:
        if epochs is not None or augment is not None:
            raise DDSecError("--epochs and --augment go with --protocol train-epochs")
        with err.status("training held-out models…"):
            result = evaluate_distilled(dset, job, n_models=models, per_step=per_step, seed=seed)
        rows = [("protocol", "steps (as distilled)")]
    summary = result.summary()
    after = "after the steps" if chosen == "steps" else "after training"
    rows = [
        ("file", str(file)),
        ("set", f"{meta.dataset}, {meta.model}, init {meta.init}, {meta.epochs} epochs, ipc {meta.ipc}"),
        *rows,
        (f"accuracy {after}, {summary['models']} models", percent(summary["acc_mean"], summary["acc_std"])),
        (f"accuracy before {'the steps' if chosen == 'steps' else 'training'}", percent(summary["acc_before_mean"])),
    ]
    out.print(result_table("ddsec eval", rows))
    if per_step and result.per_step is not None:
        curve = [(f"step {t}", percent(float(acc.mean()), float(acc.std()) if acc.numel() > 1 else 0.0))
                 for t, acc in enumerate(result.per_step)]
        out.print(result_table("accuracy after each inner step", curve))
    baselines = run_baselines(dset, job, kinds, models=models, grid_models=grid_models, candidates=candidates,
                              seed=seed, quiet=quiet) if kinds else {}
    if baselines:
        out.print(baseline_table(meta, summary, baselines))
    if json_out:
        payload = {"output": str(file), "eval": summary}
        if result.per_step is not None:
            payload["per_step_mean"] = [round(float(a.mean()), 6) for a in result.per_step]
        if baselines:
            payload["baselines"] = {kind: {**r.summary(), "grid": r.grid, "details": r.details}
                                    for kind, r in baselines.items()}
        print_json(payload)


def train_epochs(dset: DistilledSet, job: DistillJob, *, models: int, epochs: int | None, augment: str | None,
                 seed: int, quiet: bool, chosen_by: str) -> tuple[EvalResult, list[tuple[str, str]]]:
    """The train-epochs protocol on fresh models, with the set's defaults; the result and its table rows."""
    from ddsec.condense.augment import evaluation_augment
    from ddsec.condense.protocol import default_augmentation, default_epochs, evaluate_set

    epochs = default_epochs(dset.meta.config) if epochs is None else epochs
    augmentation = default_augmentation(dset.meta.config) if augment is None else augment
    evaluation_augment(augmentation, "--augment")
    if epochs < 1 or models < 1:
        raise DDSecError(f"--epochs and --models must be at least 1, got {epochs} and {models}")
    bars = StageBars(quiet)
    try:
        result = evaluate_set(job.model, job.heldout, dset.images, dset.labels, job.test, n_models=models,
                              epochs=epochs, augmentation=augmentation, seed=seed,
                              on_model=lambda done, total: bars.reporter("train-epochs")("models", done, total))
    finally:
        bars.close()
    rows = [("protocol", f"train-epochs ({chosen_by}): {epochs} epochs, SGD, augmentation {augmentation}")]
    return result, rows
