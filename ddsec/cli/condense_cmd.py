"""``ddsec distill --method dc|dsa|dm``: condense a dataset by gradient or distribution matching.

The options shared with ``--method dd`` are declared in :mod:`ddsec.cli.distill_cmd`; this module
checks which options fit which method, runs the condensation with a progress bar and prints
the same result table and JSON line as the unrolled distiller.
"""

from __future__ import annotations

from pathlib import Path

from ddsec.cli import options as O
from ddsec.cli.common import StageBars
from ddsec.cli.render import err, out, percent, print_json, result_table, say_where_resumed
from ddsec.errors import DDSecError

METHOD_HELP = ("dd: unrolled steps with learned step sizes (Wang et al.); dc: gradient matching; dsa: gradient"
               " matching with Siamese augmentation; dm: distribution matching (Zhao et al.).")
CONDENSE_METHODS = ("dc", "dsa", "dm")


def check_options(method: str, *, dd_only: dict[str, tuple[object, object]], condense_only: dict[str, object]) -> None:
    """Refuse options that do not apply to ``method``.

    Args:
        dd_only: flag → (value, default) of the options of ``--method dd`` only.
        condense_only: flag → value (``None`` when not given) of the options of dc/dsa/dm only.

    Raises:
        DDSecError: an unknown method, or an option given for a method it does not apply to.
    """
    if method not in ("dd", *CONDENSE_METHODS):
        raise DDSecError(f"--method must be one of dd, {', '.join(CONDENSE_METHODS)}, got {method!r}")
    if method == "dd":
        given = [flag for flag, value in condense_only.items() if value is not None]
        if given:
            raise DDSecError(f"{given[0]} does not apply to --method dd (see --help for what dc|dsa|dm take)")
        return
    given = [flag for flag, (value, default) in dd_only.items() if value != default]
    if given:
        raise DDSecError(f"{given[0]} applies to --method dd, not {method}")


def condense_command(cfg, *, out_path: Path | None, resume: bool, force: bool, checkpoint_seconds: float,
                     json_out: bool, quiet: bool) -> None:
    """Run ``cfg`` (a :class:`~ddsec.condense.CondenseConfig`), export the set, print the results."""
    from ddsec.condense import prepare_condense, run_condense
    from ddsec.export import save_distilled

    default = Path("distilled") / f"{cfg.dataset}-{cfg.method}-ipc{cfg.ipc}.safetensors"
    output, checkpoint = O.output_paths(out_path, default, resume=resume, force=force)
    with err.status("loading data, building the model" + (" and clustering features…" if cfg.clusters else "…")):
        job = prepare_condense(cfg, cluster_cache=output.with_name(output.name + ".clusters"))
    bars = StageBars(quiet)
    report = bars.reporter(cfg.method)

    def on_progress(progress) -> None:
        say_where_resumed(progress)
        report("condensing", progress.iteration, progress.iterations, f"loss {progress.loss:.4f}")

    try:
        outcome = run_condense(
            job, checkpoint_path=checkpoint, resume=resume, checkpoint_seconds=checkpoint_seconds,
            on_progress=on_progress,
            on_eval=lambda done, total: report(f"evaluating ({cfg.eval_epochs} epochs per model)", done, total))
    finally:
        bars.close()
    save_distilled(output, outcome.distilled)
    checkpoint.unlink(missing_ok=True)

    summary = outcome.evaluation.summary()
    sampling = (f"k-means, {cfg.clusters} clusters of {cfg.feature_arch}:{cfg.feature_layer}"
                f"{' (cached)' if job.clusters_cached else ''}" if cfg.batch_sampling == "kmeans" else "random")
    rows = [
        ("output", str(output)),
        ("set", f"{outcome.distilled.images_per_step} images ({cfg.dataset}, {cfg.model}, {cfg.method},"
                f" ipc {cfg.ipc}, init {cfg.image_init})"),
        ("real batches", sampling),
        ("condensation time", f"{outcome.seconds:.1f} s, {len(outcome.losses)} iterations"
                              + (f" (planned for --budget {cfg.budget})" if cfg.budget else "")),
        ("final matching loss", f"{float(outcome.losses[-1]):.4f}"),
        (f"accuracy, {summary['models']} fresh models × {cfg.eval_epochs} epochs", percent(summary["acc_mean"], summary["acc_std"])),
        ("accuracy before training", percent(summary["acc_before_mean"])),
    ]
    out.print(result_table(f"ddsec distill --method {cfg.method}", rows))
    if json_out:
        print_json({"output": str(output), "seconds": round(outcome.seconds, 3),
                    "iterations": len(outcome.losses), "budget": cfg.budget,
                    "method": cfg.method, "eval": summary})
