"""``ddsec detect``: screen a victim's data for a poisoning batch with standard detectors."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ddsec.cli import options as O
from ddsec.cli.render import err, out, percent, print_json, print_notes, progress_bar, user_errors
from ddsec.errors import DDSecError


@user_errors
def detect(
    file: Path = typer.Argument(..., help="A poisoning batch (.safetensors) written by `ddsec poison`."),
    detector: list[str] = typer.Option(["all"], help="spectral | activation-clustering | knn | loss | gradient-norm |"
                                                     " gradient-alignment | pixels | all (repeatable)."),
    clean_size: Optional[int] = typer.Option(None, help="Inject into this many clean training images (a fine-tuning"
                                                        " set) instead of the whole training set."),
    models: Optional[int] = typer.Option(None, help="Held-out models that score the data, one at a time (each is also a victim; default 10, or the whole held-out population when smaller)."),
    victim: str = typer.Option("sgd name=paper", help="How each victim trains on what the filter keeps (a victim spec,"
                                                      " as in `ddsec stress --victim`)."),
    fpr: list[float] = typer.Option([0.01, 0.05], help="False-positive rates at which to report the true-positive rate"
                                                       " (repeatable)."),
    layer: str = typer.Option("penultimate", help="Features for spectral, clustering and k-NN: 'penultimate' (the input"
                                                  " of the last linear layer) or a module name of the model."),
    k: int = typer.Option(10, help="Neighbours of deep k-NN."),
    expected_fraction: Optional[float] = typer.Option(None, help="Poison fraction the spectral rule expects (default:"
                                                                 " the real one)."),
    art: bool = typer.Option(False, help="Cross-check spectral and clustering against ART (pip install 'ddsec[art]')."),
    heldout_population: Optional[str] = O.HELDOUT_OF_BATCH,
    png: Optional[Path] = typer.Option(None, help="ROC curves (default: FILE with .roc.png)."),
    data_dir: Optional[str] = O.DATA_DIR,
    zoo: Optional[str] = O.ZOO,
    seed: int = typer.Option(0, help="Seed of the held-out draw, the clean subset and the victims' draws."),
    device: str = O.DEVICE,
    json_out: bool = O.JSON,
    quiet: bool = O.QUIET,
) -> None:
    """Inject a poisoning batch into a victim's data, score every sample for poison, filter, re-train the victim."""
    import torch

    from ddsec.attacks import parse_victim, prepare_from_file
    from ddsec.defences import check_fpr, detector_names, feature_module, inject, make_detectors, screen
    from ddsec.defences.art_check import SHARED, cross_check, require_art
    from ddsec.defences.metrics import mean_roc
    from ddsec.engine import SyntheticSet, distinct_draws
    from ddsec.evaluate import heldout_count
    from ddsec.plots import roc_curves

    for rate in fpr:
        check_fpr(rate)
    for flag, value in (("--models", models), ("--k", k)):
        if value is not None and value < 1:
            raise DDSecError(f"{flag} must be at least 1, got {value}")
    if expected_fraction is not None and not 0 < expected_fraction < 1:
        raise DDSecError(f"--expected-fraction must lie strictly between 0 and 1, got {expected_fraction}")
    spec = parse_victim(victim)
    names = detector_names(detector)  # checked before any loading
    if art and not set(SHARED) & set(names):
        raise DDSecError("--art compares the spectral and activation-clustering detectors; select one of them")
    if art:
        require_art()
    with err.status("loading the batch, the data and the held-out models…"):
        dset, job = prepare_from_file(file, data_dir=data_dir, zoo=zoo, device=device,
                                      heldout_population=heldout_population)
    base, cfg = job.base, job.cfg
    feature_module(base.model, layer, flag="--layer")
    models, note = heldout_count(models, base.heldout, flag="--models", default=10)
    print_notes([] if note is None else [note])
    poison = SyntheticSet.from_lrs(dset.images.to(base.device), dset.labels.to(base.device), dset.lrs.to(base.device),
                                   dset.meta.epochs)
    data = inject(poison, base.train, clean_size, torch.Generator().manual_seed(seed))
    detectors = make_detectors(names, mean=base.train.mean, std=base.train.std,
                               expected_fraction=expected_fraction or float(data.is_poison.float().mean()), k=k)
    params = base.heldout.sample(distinct_draws(base.heldout, models), torch.Generator().manual_seed(seed))
    with progress_bar("held-out models", models, quiet=quiet) as update:
        result = screen(base.model, params, poison, data, base.test, detectors, attack=cfg.attack, target=cfg.target,
                        victim=spec, fprs=tuple(fpr), layer=layer, seed=seed,
                        on_model=lambda done, total: update(done, f"model {done}/{total}"))
    summary = result.summary()
    if art:
        summary["art"] = cross_check(base.model, params, data, detectors, base.train.num_classes, seed)
    picture = png or file.with_suffix(".roc.png")
    roc_curves(picture, {r.name: mean_roc(r.scores, data.is_poison) for r in result.detectors},
               f"{file.name}: {int(data.is_poison.sum())} poison among {result.clean_samples} clean, {models} models")
    out.print(_table(summary, cfg.attack, cfg.target, fpr, spec.name))
    for name, check in summary.get("art", {}).items():
        err.print(f"ART {name}: same verdict on {percent(check['same_verdict'])} of samples, Jaccard of the flagged"
                  f" sets {check['jaccard']:.2f} (mean over models)", highlight=False)
    err.print(f"ROC curves: {picture}", highlight=False)
    if json_out:
        print_json({"file": str(file), "attack": cfg.attack, "target": cfg.target, "victim": spec.name,
                    "png": str(picture), **summary})


def _table(summary: dict, attack: int, target: int, fprs: list[float], victim: str) -> Table:
    before = summary["before"]
    table = Table(title=f"detection: {summary['poison_samples']} poison among {summary['clean_samples']} clean samples,"
                        f" {summary['models']} held-out models; class {attack} → {target}, victim {victim!r}"
                        f" (before any step: attack success {percent(before['asr_mean'])}); filtering removes what"
                        f" each detector flags at FPR {percent(summary['filter_fpr'])}", title_justify="left")
    for column in ("detector", "AUROC", *(f"TPR @ FPR {100 * f:g} %" for f in fprs), "own rule TP/FP/FN/TN",
                   "attack success after filtering", "clean accuracy after"):
        table.add_column(column)
    for name, row in summary["detectors"].items():
        counts = row["own_rule"]
        after = row["after_filter"]
        table.add_row(name, f"{row['auroc']['mean']:.3f} ± {row['auroc']['std']:.3f}",
                      *(percent(row["tpr_at_fpr"][str(f)]["mean"]) for f in fprs),
                      f"{counts['tp']}/{counts['fp']}/{counts['fn']}/{counts['tn']}",
                      percent(after["asr_mean"], after["asr_std"]), percent(after["acc_clean"]))
    for label, key in (("no filter", "no_filter"), ("perfect filter", "perfect_filter")):
        row = summary[key]
        table.add_row(label, "", *("" for _ in fprs), "", percent(row["asr_mean"], row["asr_std"]),
                      percent(row["acc_clean"]))
    return table
