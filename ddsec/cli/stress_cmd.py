"""``ddsec stress``: replay a poisoning batch on held-out models under realistic victims."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.table import Table

from ddsec.cli import options as O
from ddsec.cli.render import err, out, percent, print_json, print_notes, progress_bar, user_errors
from ddsec.errors import DDSecError

if TYPE_CHECKING:
    from ddsec.attacks import StressCell

COLUMNS = (("asr", "attack success"), ("acc_other", "other classes"), ("acc_clean", "clean accuracy"))


@user_errors
def stress(
    file: Path = typer.Argument(..., help="A poisoning batch (.safetensors) written by `ddsec poison`."),
    victim: list[str] = typer.Option([], help="A victim spec, e.g. 'sgd lr=x0.5 mix=32' or 'adam lr=0.001 steps=10'"
                                              " (repeatable; keys: lr momentum wd mix steps placement augment warmup"
                                              " after clean-lr clean-batch name)."),
    standard: bool = typer.Option(True, help="Include the standard victims (the paper's, then one change at a time)."),
    models: Optional[int] = typer.Option(None, help="Held-out models, the same ones in every cell (default 10, or the whole held-out population when smaller)."),
    baseline: list[str] = typer.Option(["all"], help="Label-flip baselines replayed under the same victims:"
                                                     " flip-random | flip-average | flip-kmeans | all | none (repeatable)."),
    heldout_population: Optional[str] = O.HELDOUT_OF_BATCH,
    population: list[str] = typer.Option([], help="Also replay the batch, as the paper's victim, on the held-out models of"
                                                  " this zoo entry or path: another architecture or recipe (repeatable)."),
    png: Optional[Path] = typer.Option(None, help="Heatmap of the matrix (default: FILE with .stress.png)."),
    data_dir: Optional[str] = O.DATA_DIR,
    zoo: Optional[str] = O.ZOO,
    seed: int = typer.Option(0, help="Seed of the held-out draws, clean batches and shifts."),
    device: str = O.DEVICE,
    json_out: bool = O.JSON,
    quiet: bool = O.QUIET,
) -> None:
    """Replay a poisoning batch under many victims: attack success, other classes and clean accuracy per victim."""
    from ddsec.attacks import (FLIP_KINDS, PAPER_VICTIM, STANDARD_VICTIMS, parse_victim, prepare_from_file,
                               stress_matrix, victim_spec)
    from ddsec.attacks.poison import other_population
    from ddsec.attacks.baselines import select_flip_batch
    from ddsec.engine import SyntheticSet
    from ddsec.evaluate import heldout_count
    from ddsec.plots import heatmap

    victims = [*(STANDARD_VICTIMS if standard else ()), *(parse_victim(spec) for spec in victim)]
    if not victims:
        raise DDSecError("no victims: pass --victim SPEC, or leave the standard set on")
    kinds = [] if "none" in baseline else list(FLIP_KINDS) if "all" in baseline else baseline
    unknown = sorted(set(kinds) - set(FLIP_KINDS))
    if unknown:
        raise DDSecError(f"unknown --baseline {unknown[0]!r}; choose from {', '.join(FLIP_KINDS)}, all or none")
    if models is not None and models < 1:
        raise DDSecError(f"--models must be at least 1, got {models}")
    with err.status("loading the batch, the data and the held-out models…"):
        dset, job = prepare_from_file(file, data_dir=data_dir, zoo=zoo, device=device,
                                      heldout_population=heldout_population)
    base, cfg = job.base, job.cfg
    models, note = heldout_count(models, base.heldout, flag="--models", default=10)
    print_notes([] if note is None else [note])
    device_of = base.device
    poison = SyntheticSet.from_lrs(dset.images.to(device_of), dset.labels.to(device_of), dset.lrs.to(device_of),
                                   dset.meta.epochs)
    with err.status("label-flip baselines: choosing their step sizes on the training population…"):
        flips = {kind: select_flip_batch(kind, model=base.model, train_init=base.init, train=base.train,
                                         attack=cfg.attack, target=cfg.target, shape=tuple(dset.images.shape[:2]),
                                         epochs=dset.meta.epochs, learned_lrs=dset.lrs, seed=seed)[0]
                 for kind in kinds}
    others = [other_population(name, base, zoo) for name in population]
    with progress_bar("victims", len(victims) + len(others), quiet=quiet) as update:
        cells = stress_matrix(base.model, base.heldout, poison, victims, base.train, base.test, attack=cfg.attack,
                              target=cfg.target, n_models=models, baselines=flips, seed=seed,
                              on_victim=lambda done, total, name: update(done, name))
        for index, (name, (model, heldout, path)) in enumerate(zip(population, others)):  # other models
            victim = replace(PAPER_VICTIM, name=f"paper on {name}")
            cells += stress_matrix(model, heldout, poison, [victim], base.train, base.test, attack=cfg.attack,
                                   target=cfg.target, n_models=heldout_count(models, heldout, flag="")[0],
                                   baselines=flips, seed=seed)
            update(len(victims) + index + 1, name)
    picture = png or file.with_suffix(".stress.png")
    columns = [label for _, label in COLUMNS] + [f"{kind}: {label}" for kind in kinds for _, label in COLUMNS[:2]]
    values = [[cell.batch.after.mean()[key] for key, _ in COLUMNS] +
              [cell.baselines[kind].after.mean()[key] for kind in kinds for key, _ in COLUMNS[:2]] for cell in cells]
    heatmap(picture, values, [cell.victim.name for cell in cells], columns,
            f"{file.name}: class {cfg.attack} → {cfg.target}, {cells[0].batch.models} held-out {cfg.model} models")
    out.print(_table(cells, kinds, cfg.attack, cfg.target))
    err.print(f"heatmap: {picture}", highlight=False)
    if json_out:
        print_json({"file": str(file), "attack": cfg.attack, "target": cfg.target, "png": str(picture),
                    "models": cells[0].batch.models, "victims": [
                        {"victim": victim_spec(cell.victim), "batch": cell.batch.summary(),
                         "baselines": {kind: result.summary() for kind, result in cell.baselines.items()}}
                        for cell in cells]})


def _table(cells: list[StressCell], kinds: list[str], attack: int, target: int) -> Table:
    first = cells[0].batch.summary()
    table = Table(title=f"robustness matrix: {attack} → {target}, {first['models']} held-out models (before any step:"
                        f" attack success {percent(first['asr_before'])}, other classes"
                        f" {percent(first['acc_other_before'])})", title_justify="left")
    for column in ("victim", "attack success", "other classes", "clean accuracy",
                   *(f"{k}: success / other" for k in kinds)):
        table.add_column(column)
    for cell in cells:
        s = cell.batch.summary()
        flips = [cell.baselines[k].summary() for k in kinds]
        table.add_row(cell.victim.name, percent(s["asr_mean"], s["asr_std"]), percent(s["acc_other_after"]),
                      percent(s["acc_clean_after"]),
                      *(f"{percent(f['asr_mean'])} / {percent(f['acc_other_after'])}" for f in flips))
    return table
