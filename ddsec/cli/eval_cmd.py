"""``ddsec eval``: train held-out models with a distilled set and report their accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ddsec.cli.render import err, out, percent, print_json, result_table, user_errors


@user_errors
def evaluate(
    file: Path = typer.Argument(..., help="A distilled set (.safetensors) written by ddsec."),
    models: int = typer.Option(200, help="Held-out models (fresh random inits; 1 for a fixed or pretrained init)."),
    per_step: bool = typer.Option(False, help="Also print the accuracy after every inner step."),
    data_dir: Optional[str] = typer.Option(None, help="Data root (default $DDSEC_DATA, else ~/.cache/ddsec/data)."),
    heldout_population: Optional[str] = typer.Option(None, help="Held-out population (sets distilled with --init population)."),
    seed: int = typer.Option(1, help="Seed of the held-out draws."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object as the last line of stdout."),
) -> None:
    """Evaluate a distilled set exactly as distilled (step order, learned step sizes, epochs)."""
    from ddsec.distill import evaluate_distilled_file

    err.print("[dim]training held-out models…[/]")
    result, meta = evaluate_distilled_file(file, n_models=models, per_step=per_step, data_dir=data_dir,
                                 heldout_population=heldout_population, seed=seed, device=device)
    summary = result.summary()
    rows = [
        ("file", str(file)),
        ("set", f"{meta.dataset}, {meta.model}, init {meta.init}, {meta.epochs} epochs, ipc {meta.ipc}"),
        (f"accuracy after the steps, {summary['models']} models", percent(summary["acc_mean"], summary["acc_std"])),
        ("accuracy before the steps", percent(summary["acc_before_mean"])),
    ]
    out.print(result_table("ddsec eval", rows))
    if per_step and result.per_step is not None:
        curve = [(f"step {t}", percent(float(acc.mean()), float(acc.std()) if acc.numel() > 1 else 0.0))
                 for t, acc in enumerate(result.per_step)]
        out.print(result_table("accuracy after each inner step", curve))
    if json_out:
        payload = {"output": str(file), "eval": summary}
        if result.per_step is not None:
            payload["per_step_mean"] = [round(float(a.mean()), 6) for a in result.per_step]
        print_json(payload)
