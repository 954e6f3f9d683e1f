"""``ddsec distill``: learn a distilled training set and export it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ddsec.cli import options as O
from ddsec.cli.launch import NPROC, relaunch
from ddsec.cli.condense_cmd import METHOD_HELP, check_options, condense_command
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
from ddsec.distill import DistillConfig as D
from ddsec.distill import prepare_distill, run_distill
from ddsec.export import save_distilled



@user_errors
def distill(
    method: str = typer.Option("dd", help=METHOD_HELP),
    dataset: str = typer.Option(D.dataset, help="digits (embedded), mnist, usps, svhn, cifar10, voc, cub, imagefolder."),
    data_dir: Optional[str] = O.DATA_DIR,
    download: bool = O.DOWNLOAD,
    model: Optional[str] = typer.Option(None, help="Registered model (see models_zoo); default lenet for dd, convnet3 for dc|dsa|dm."),
    steps: int = typer.Option(D.steps, help="Distinct synthetic step batches S."),
    epochs: int = typer.Option(D.epochs, help="Times the S batches are replayed (T = S × epochs)."),
    ipc: int = typer.Option(D.ipc, help="Images per class in each step batch."),
    init: str = typer.Option(D.init, help="p(θ0): random | fixed | pretrained | population."),
    init_scheme: str = typer.Option(D.init_scheme, help="Random init: xavier | kaiming | default."),
    init_seed: int = typer.Option(D.init_seed, help="Seed of the fixed init (--init fixed)."),
    weights: Optional[str] = typer.Option(None, help="Weights file for --init pretrained (.safetensors or .pth)."),
    population: Optional[str] = typer.Option(None, help="Population file for --init population."),
    heldout_population: Optional[str] = typer.Option(None, help="Held-out population for evaluation."),
    n_models: int = typer.Option(D.n_models, help="Initial weights sampled per outer iteration (1 for fixed and pretrained inits, whose draws are identical)."),
    iterations: Optional[int] = typer.Option(None, help="Outer iterations (default 40 for dd, 1000 for dc|dsa, 20000 for dm)."),
    batch_size: int = typer.Option(D.batch_size, help="Real images per outer iteration (dd) or per class (dc|dsa|dm)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate for the images: Adam, 0.05 (dd); SGD with momentum 0.5, 0.1 (dc|dsa) or 1.0 (dm)."),
    lr_step_sizes: Optional[float] = O.LR_STEP_SIZES,
    distill_lr: float = typer.Option(D.distill_lr, help="Initial inner step size."),
    decay_every: Optional[int] = O.DECAY_EVERY,
    mode: str = O.MODE,
    keep_graphs: Optional[bool] = typer.Option(None, "--keep-graphs/--recompute-graphs", help="hvp: keep each step's graph instead of recomputing it (faster, more memory; default: the dataset's recipe, else recompute)."),
    theta_every: Optional[str] = O.THETA_EVERY,
    compile: str = O.COMPILE,
    learn_labels: bool = O.LEARN_LABELS,
    momentum: Optional[float] = typer.Option(None, help="Inner momentum: 0 is plain SGD (the paper); in (0, 1) the inner steps use SGD with a learned momentum per step, starting here (default: the dataset's recipe, else 0)."),
    lr_momenta: Optional[float] = O.LR_MOMENTA,
    image_init: str = typer.Option(D.image_init, help="Start images from random real ones of each class (real), noise,"
                                                     " per-class k-means centroids (kmeans) or class means (average);"
                                                     " dc|dsa|dm take real or noise (--init is dd's p(θ0))."),
    seed: int = O.SEED,
    device: str = O.DEVICE,
    out_path: Optional[Path] = typer.Option(None, "--out", help="Output .safetensors (default distilled/<dataset>-<model>.safetensors)."),
    resume: bool = O.RESUME,
    force: bool = O.FORCE,
    checkpoint_seconds: float = O.CHECKPOINT_SECONDS,
    budget: Optional[str] = O.BUDGET,
    decay_fraction: Optional[float] = O.DECAY_FRACTION,
    eval_models: Optional[int] = typer.Option(None, help="Held-out models for the final evaluation (default 20 for dd, 5 for dc|dsa|dm; at most the held-out population's size)."),
    eval_every: Optional[int] = O.EVAL_EVERY,
    outer_loop: Optional[int] = typer.Option(None, help="dc|dsa: image updates per iteration (default by --ipc: 1 for 1, 10 for 10)."),
    inner_loop: Optional[int] = typer.Option(None, help="dc|dsa: network epochs between image updates (default by --ipc: 1 for 1, 50 for 10)."),
    lr_net: Optional[float] = typer.Option(None, help="dc|dsa: SGD learning rate of the matched network (default 0.01)."),
    dsa_strategy: Optional[str] = typer.Option(None, help="dsa|dm: DSA operations joined by '_' (color crop cutout flip scale rotate)"
                                                         " or none; default all, without flip for digit datasets."),
    batch_sampling: Optional[str] = typer.Option(None, help="dc|dsa: real batches random (default) or kmeans (one feature cluster per batch)."),
    clusters: Optional[int] = typer.Option(None, help="kmeans: clusters per class (default 10)."),
    feature_layer: Optional[str] = typer.Option(None, help="kmeans: layer whose pooled output is clustered (a module name, or penultimate: the default)."),
    feature_model: Optional[str] = typer.Option(None, help="kmeans: weights of the pretrained feature network (.safetensors or .pth)."),
    feature_arch: Optional[str] = typer.Option(None, help="kmeans: architecture of --feature-model (default --model)."),
    mix_after: Optional[int] = typer.Option(None, help="kmeans: from this iteration on, half the batches are plain random ones."),
    eval_epochs: Optional[int] = typer.Option(None, help="dc|dsa|dm: training epochs of each evaluation model (default 1000 when they train with augmentation: dsa, dm, and dc on mnist; else 300)."),
    nproc: int = NPROC,
    json_out: bool = O.JSON,
    quiet: bool = O.QUIET,
) -> None:
    """Distil a dataset into a few synthetic images and learned step sizes (or condense it with --method dc|dsa|dm)."""
    check_options(
        method,
        dd_only={"--steps": (steps, D.steps), "--epochs": (epochs, D.epochs), "--init": (init, D.init),
                 "--init-scheme": (init_scheme, D.init_scheme), "--init-seed": (init_seed, D.init_seed),
                 "--weights": (weights, None), "--population": (population, None),
                 "--heldout-population": (heldout_population, None), "--n-models": (n_models, D.n_models),
                 "--lr-step-sizes": (lr_step_sizes, None), "--distill-lr": (distill_lr, D.distill_lr),
                 "--decay-every": (decay_every, None), "--mode": (mode, D.mode),
                 "--keep-graphs": (keep_graphs, None), "--theta-every": (theta_every, None), "--compile": (compile, D.compile), "--learn-labels": (learn_labels, D.learn_labels),
                 "--momentum": (momentum, None), "--lr-momenta": (lr_momenta, None), "--nproc": (nproc, 1),
                 "--eval-every": (eval_every, None), "--decay-fraction": (decay_fraction, None)},
        condense_only={"--outer-loop": outer_loop, "--inner-loop": inner_loop, "--lr-net": lr_net,
                       "--dsa-strategy": dsa_strategy, "--batch-sampling": batch_sampling, "--clusters": clusters,
                       "--feature-layer": feature_layer, "--feature-model": feature_model,
                       "--feature-arch": feature_arch, "--mix-after": mix_after, "--eval-epochs": eval_epochs},
    )
    if method != "dd":
        from ddsec.condense import CondenseConfig

        iterations, budget, notes = O.iterations_or_budget(iterations, budget, None)
        print_notes(notes)
        settings = dict(model=model, iterations=iterations, budget=budget, lr_img=lr, eval_models=eval_models,
                        lr_net=lr_net, batch_sampling=batch_sampling)
        condense_command(CondenseConfig(
            method=method, dataset=dataset, data_dir=data_dir, download=download, ipc=ipc, image_init=image_init,
            batch_real=batch_size, outer_loop=outer_loop, inner_loop=inner_loop, dsa_strategy=dsa_strategy,
            clusters=clusters, feature_layer=feature_layer, feature_model=feature_model, feature_arch=feature_arch,
            mix_after=mix_after, seed=seed, device=device, eval_epochs=eval_epochs,
            **{k: v for k, v in settings.items() if v is not None},
        ), out_path=out_path, resume=resume, force=force, checkpoint_seconds=checkpoint_seconds, json_out=json_out,
            quiet=quiet)
        return
    relaunch(nproc)
    model = model or D.model
    given = dict(iterations=iterations, budget=budget, decay_fraction=decay_fraction, lr=lr, lr_step_sizes=lr_step_sizes,
                 keep_graphs=keep_graphs, momentum=momentum, lr_momenta=lr_momenta)
    settings, notes = O.with_recipe("distill", dataset, given, D.iterations)
    iterations = settings["iterations"]
    every = O.eval_interval(eval_every, iterations)
    cfg = D(
        dataset=dataset, data_dir=data_dir, download=download, model=model, steps=steps, epochs=epochs, ipc=ipc, init=init,
        init_scheme=init_scheme, init_seed=init_seed, weights=weights, population=population,
        heldout_population=heldout_population, n_models=n_models, batch_size=batch_size, distill_lr=distill_lr,
        decay_every=decay_every, mode=mode, theta_every=O.theta_every(theta_every), compile=compile, image_init=image_init,
        learn_labels=learn_labels, seed=seed, device=device,
        eval_models=eval_models, **settings,
    )
    default = Path("distilled") / f"{dataset}-{model}.safetensors"
    output, checkpoint = O.output_paths(out_path, default, resume=resume, force=force)
    with err.status("loading data and building the model…"):
        job = prepare_distill(cfg)
    print_notes(notes + job.notes)
    with progress_bar("distilling", iterations or 1, quiet=quiet) as update:
        outcome = run_distill(job, checkpoint_path=checkpoint, resume=resume, checkpoint_seconds=checkpoint_seconds,
                              eval_every=every, eval_times=5, on_progress=loop_reporter(update, "held-out"))
    if outcome is None:  # another rank of a distributed run: rank 0 evaluates and exports
        return
    save_distilled(output, outcome.distilled)
    checkpoint.unlink(missing_ok=True)

    summary = outcome.evaluation.summary()
    rows = [
        ("output", str(output)),
        ("set", f"{outcome.distilled.steps} steps × {outcome.distilled.meta.epochs} epochs × "
                f"{outcome.distilled.images_per_step} images ({dataset}, {model}, init {init})"),
        ("distillation time", f"{outcome.seconds:.1f} s"),
        ("final outer loss", f"{float(outcome.losses[-1]):.4f}"),
        (f"held-out accuracy, {summary['models']} models", percent(summary["acc_mean"], summary["acc_std"])),
        ("accuracy before the steps", percent(summary["acc_before_mean"])),
    ]
    out.print(result_table("ddsec distill", rows))
    if json_out:
        plan = outcome.distilled.meta.config.get("plan", {})
        print_json({"output": str(output), "seconds": round(outcome.seconds, 3), "iterations": plan.get("iterations", iterations), "plan": plan,
                    "eval": summary})
