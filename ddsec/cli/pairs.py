"""``ddsec poison --pairs``: the sweep over class pairs, with a progress bar over pairs, its tables and JSON."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from ddsec.cli.render import (
    out,
    percent,
    points,
    print_json,
    print_notes,
    progress_bar,
    result_table,
    say_where_resumed,
)
from ddsec.errors import DDSecError

if TYPE_CHECKING:
    from ddsec.attacks import PoisonConfig
    from ddsec.attacks.sweep import SweepResult


def sweep(cfg: PoisonConfig, pairs: str, output: Path, train_entry: Callable[[str], None], *, resume: bool,
          force: bool, checkpoint_seconds: float, notes: list[str], json_out: bool, quiet: bool) -> None:
    """Run the sweep named after ``output`` over ``pairs`` (``--pairs``) and render its results."""
    from ddsec.attacks.sweep import prepare_sweep, run_sweep

    if output.suffix != ".safetensors":
        raise DDSecError(f"--out must end in .safetensors (the sweep names its files after it), got {output}")
    job, chosen = prepare_sweep(cfg, pairs, train_entry)
    print_notes(notes + job.notes)
    current = {"done": 0, "pair": ""}
    with progress_bar("pairs", len(chosen), quiet=quiet) as update:

        def on_pair(done: int, pair: tuple[int, int], record: dict | None) -> None:
            current["done"], current["pair"] = done, f"{pair[0]}→{pair[1]}"
            update(done, current["pair"] + ("" if record is None else f" {record['status']}"))

        def on_progress(progress: Any, _: float | None) -> None:
            say_where_resumed(progress)
            update(current["done"], f"{current['pair']} iteration {progress.iteration}/{progress.iterations}")

        result = run_sweep(job, chosen, output, resume=resume, force=force, checkpoint_seconds=checkpoint_seconds,
                           on_pair=on_pair, on_progress=on_progress)
    out.print(_summary(result))
    out.print(_pairs_table(result))
    if json_out:
        paths = result.paths
        print_json({"state": str(paths.state), "heatmaps": [str(paths.success), str(paths.collateral)],
                    "pairs": result.records})


def _summary(result: SweepResult) -> Table:
    records = list(result.records.values())
    done = [r for r in records if r["status"] == "done"]
    rows = [("pairs", f"{len(done)} done, {len(records) - len(done)} failed"
                      + (f" ({result.skipped} from the interrupted run)" if result.skipped else ""))]
    if done:
        weakest = min(done, key=lambda r: r["eval"]["asr_mean"])
        rows += [
            ("median attack success", percent(statistics.median(r["eval"]["asr_mean"] for r in done))),
            ("median change on other classes", f"{points(statistics.median(r['collateral'] for r in done))} points"),
            ("weakest pair", f"{weakest['attack']} → {weakest['target']}: {percent(weakest['eval']['asr_mean'])}"),
        ]
        missed = [f"{r['attack']} → {r['target']}" for r in done if r["crafting"].get("budget_met") is False]
        if missed:
            rows.append(("collateral budget not met at the training check", f"{len(missed)} pairs: {', '.join(missed)}"))
    paths = result.paths
    rows.append(("files", f"{paths.state}, {paths.success}, {paths.collateral}, one batch per pair"))
    return result_table("ddsec poison --pairs", rows)


def _pairs_table(result: SweepResult) -> Table:
    done = [r for r in result.records.values() if r["status"] == "done"]
    models = done[0]["eval"]["models"] if done else 0
    table = Table(title=f"per pair, {models} held-out models (training check: what crafting measured)",
                  title_justify="left")
    for column in ("K → T", "attack success", "worst 10 % of models", "other classes (points)", "training check",
                   "λ", "batch or error"):
        table.add_column(column)
    for r in result.records.values():
        pair = f"{r['attack']} → {r['target']}"
        if r["status"] != "done":
            table.add_row(pair, "failed", "", "", "", "", r["error"])
            continue
        s, c = r["eval"], r["crafting"]
        table.add_row(pair, percent(s["asr_mean"], s["asr_std"]), percent(s["asr_worst_decile"]),
                      points(r["collateral"]), f"{percent(c['train_asr'])}, {points(c['train_collateral'])}"
                      + (" (over budget)" if c.get("budget_met") is False else ""),
                      "" if c["lambda"] is None else f"{c['lambda']:.3g}", r["output"])
    return table
