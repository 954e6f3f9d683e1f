"""``ddsec adapt``: distil target-domain images that adapt source-pretrained models."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ddsec.cli import options as O
from ddsec.cli.launch import NPROC, relaunch
from ddsec.adapt.adapt import AdaptConfig as A
from ddsec.cli.render import (
    err,
    loop_reporter,
    out,
    percent,
    print_json,
    print_notes,
    progress_bar,
    result_table,
    user_errors,
)
from ddsec.errors import DDSecError


@user_errors
def adapt(
    src: str = typer.Option(..., help="Source domain the models were trained on: mnist | usps | usps-pooled | svhn | imagenet."),
    tgt: str = typer.Option(..., help="Target domain: mnist | usps | usps-pooled | svhn (digit sources) or voc | cub (imagenet)."),
    data_dir: Optional[str] = O.DATA_DIR,
    download: bool = O.DOWNLOAD,
    model: Optional[str] = typer.Option(None, help="Registered model (default lenet; alexnet for imagenet)."),
    steps: Optional[int] = typer.Option(None, help="Distinct synthetic step batches S (default 10; 1 for imagenet)."),
    epochs: Optional[int] = typer.Option(None, help="Times the S batches are replayed (default 3)."),
    ipc: int = typer.Option(A.ipc, help="Images per class in each step batch."),
    init: Optional[str] = typer.Option(None, help="population (draws of source models; held-out evaluation; default for digits) | fixed (one source model; imagenet)."),
    image_size: Optional[int] = typer.Option(None, help="imagenet: input size in pixels (default 224)."),
    population: Optional[str] = typer.Option(None, help="Source population: zoo name or path (default <src>-<model>[-<size>px<c>c], trained on first use)."),
    heldout: Optional[str] = typer.Option(None, help="Held-out source population (default: the source entry's)."),
    weights: Optional[str] = typer.Option(None, help="--init fixed: the source model's weights (default: the population's first model); imagenet: torchvision's AlexNet .pth or .safetensors."),
    zoo: Optional[str] = O.ZOO,
    n_models: int = typer.Option(A.n_models, help="Source models drawn per outer iteration."),
    iterations: Optional[int] = typer.Option(None, help=f"Outer iterations (default: the pair's recipe, else {A.iterations}; or what --budget allows)."),
    budget: Optional[str] = O.BUDGET,
    decay_fraction: Optional[float] = O.DECAY_FRACTION,
    batch_size: int = typer.Option(A.batch_size, help="Real target images per outer iteration."),
    lr: float = typer.Option(A.lr, help="Adam learning rate for the images."),
    lr_step_sizes: Optional[float] = O.LR_STEP_SIZES,
    distill_lr: float = typer.Option(A.distill_lr, help="Initial inner step size."),
    decay_every: Optional[int] = O.DECAY_EVERY,
    mode: str = O.MODE,
    keep_graphs: bool = O.KEEP_GRAPHS,
    theta_every: Optional[str] = O.THETA_EVERY,
    compile: str = O.COMPILE,
    learn_labels: bool = O.LEARN_LABELS,
    momentum: float = O.MOMENTUM,
    lr_momenta: Optional[float] = O.LR_MOMENTA,
    seed: int = O.SEED,
    device: str = O.DEVICE,
    out_path: Optional[Path] = typer.Option(None, "--out", help="Output .safetensors (default distilled/adapt-<src>-<tgt>.safetensors)."),
    resume: bool = O.RESUME,
    force: bool = O.FORCE,
    checkpoint_seconds: float = O.CHECKPOINT_SECONDS,
    eval_models: Optional[int] = typer.Option(None, help=f"Held-out source models evaluated (default {A.EVAL_MODELS}, or the whole held-out population when smaller)."),
    eval_every: Optional[int] = O.EVAL_EVERY,
    baseline: list[str] = typer.Option([], help="Also evaluate: random | optimized | kmeans | average | all (repeatable)."),
    grid_models: int = O.GRID_MODELS,
    candidates: int = O.CANDIDATES,
    finetune_steps: int = typer.Option(0, help="Also report fine-tuning held-out source models on the whole target training set for this many Adam steps (0: skip)."),
    nproc: int = NPROC,
    json_out: bool = O.JSON,
    quiet: bool = O.QUIET,
) -> None:
    """Distil a few target images whose steps adapt source-pretrained models to the target domain."""
    relaunch(nproc)
    from ddsec.adapt import adapt_meta, finetune_reference, pair_defaults, prepare_adapt
    from ddsec.baselines import check_kinds
    from ddsec.cli.common import baseline_table, run_baselines, train_on_first_use
    from ddsec.distill import resolve_device, run_distill
    from ddsec.export import save_distilled
    from ddsec.models_zoo.train import TrainRecipe

    kinds = check_kinds(["random", "optimized", "kmeans", "average"] if "all" in baseline else baseline)
    if "knn" in kinds:
        raise DDSecError("--baseline knn does not adapt a model; use random, optimized, kmeans or average")
    if finetune_steps < 0:
        raise DDSecError(f"--finetune-steps must not be negative, got {finetune_steps}")
    planned, notes = O.with_recipe("adapt", f"{src}:{tgt}", dict(iterations=iterations, budget=budget,
                                                                 decay_fraction=decay_fraction), A.iterations)
    iterations, budget, decay_fraction = planned["iterations"], planned["budget"], planned.get("decay_fraction")
    every = O.eval_interval(eval_every, iterations)
    chosen = {k: v for k, v in dict(model=model, steps=steps, epochs=epochs, init=init).items() if v is not None}
    settings = pair_defaults(src) | chosen
    model = settings["model"]
    cfg = A(
        src=src, tgt=tgt, data_dir=data_dir, download=download, image_size=image_size, ipc=ipc, **settings,
        population=population, heldout_population=heldout, weights=weights, zoo=zoo, n_models=n_models,
        iterations=iterations, budget=budget, decay_fraction=decay_fraction, batch_size=batch_size, lr=lr, lr_step_sizes=lr_step_sizes, distill_lr=distill_lr,
        decay_every=decay_every, mode=mode, keep_graphs=keep_graphs,
        theta_every=O.theta_every(theta_every), compile=compile, learn_labels=learn_labels, momentum=momentum,
        lr_momenta=lr_momenta, seed=seed, device=device, eval_models=eval_models,
    )
    default = Path("distilled") / f"adapt-{src}-{tgt}-{model}.safetensors"
    output, checkpoint = O.output_paths(out_path, default, resume=resume, force=force)
    job = prepare_adapt(cfg, train_entry=lambda name, size, channels: train_on_first_use(
        name, dataset=src, model=model, quiet=quiet, root=zoo, data_dir=data_dir, download=download,
        image_size=size, channels=channels, device=resolve_device(device)))
    print_notes(notes + job.notes)
    with progress_bar("adapting", iterations or 1, quiet=quiet) as update:
        outcome = run_distill(job, checkpoint_path=checkpoint, resume=resume, checkpoint_seconds=checkpoint_seconds,
                              eval_every=every, eval_times=5, on_progress=loop_reporter(update, "held-out"), meta=adapt_meta(cfg, job))
    if outcome is None:  # another rank of a distributed run: rank 0 evaluates and exports
        return
    save_distilled(output, outcome.distilled)
    checkpoint.unlink(missing_ok=True)
    summary = outcome.evaluation.summary()
    rows = [
        ("output", str(output)),
        ("pair", f"{src} → {tgt}, {model}, init {cfg.init}, {job.train.image_shape}"),
        ("set", f"{outcome.distilled.steps} steps × {cfg.epochs} epochs × {outcome.distilled.images_per_step} images"),
        ("distillation time", f"{outcome.seconds:.1f} s"),
        (f"target accuracy, no adaptation ({summary['models']} models)", percent(summary["acc_before_mean"])),
        ("target accuracy after the distilled steps", percent(summary["acc_mean"], summary["acc_std"])),
    ]
    payload = {"output": str(output), "seconds": round(outcome.seconds, 3), "eval": summary}
    if finetune_steps:
        with err.status("fine-tuning held-out source models on the whole target training set…"):
            tuned = finetune_reference(job, n_models=job.cfg.eval_models, recipe=TrainRecipe(steps=finetune_steps),
                                       seed=seed)
        std = float(tuned.std()) if tuned.numel() > 1 else 0.0
        rows.append((f"fine-tuned on all target data ({finetune_steps} steps)", percent(float(tuned.mean()), std)))
        payload["finetune"] = {"steps": finetune_steps, "models": tuned.numel(), "acc_mean": float(tuned.mean()),
                               "acc_std": std}
    out.print(result_table("ddsec adapt", rows))
    baselines = run_baselines(outcome.distilled, job, kinds, models=job.cfg.eval_models, grid_models=grid_models,
                              candidates=candidates, seed=seed, quiet=quiet) if kinds else {}
    if baselines:
        out.print(baseline_table(outcome.distilled.meta, summary, baselines))
        payload["baselines"] = {kind: r.summary() for kind, r in baselines.items()}
    if json_out:
        print_json(payload)

