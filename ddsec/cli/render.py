"""Rendering shared by the commands: error handling, progress bars, tables and JSON lines."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ddsec.engine.distributed import PeerLostError
from ddsec.errors import DDSecError

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn ``DDSecError`` into one red line on stderr and exit 1; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DDSecError as exc:
            console = Console(stderr=True) if err.quiet and isinstance(exc, PeerLostError) else err
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]: progress is checkpointed; rerun the same command with --resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bar(description: str, total: int, quiet: bool = False) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr; yields ``update(completed, info, total=None)`` (a new
    ``total`` re-plans the bar, e.g. once a time-budgeted run has chosen its iteration count).

    When stderr is not a terminal (a log file, CI), a plain line is printed every 5 % instead,
    so that long runs stay observable.
    """
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    plain = not err.is_terminal and not quiet
    planned = [total]
    with Progress(*columns, console=err, disable=quiet or plain, transient=False) as progress:
        task = progress.add_task(description, total=total, info="")
        start, printed = time.perf_counter(), [-1]

        def update(completed: int, info: str = "", total: int | None = None) -> None:
            if total is not None and total != planned[0]:
                planned[0] = total
                progress.update(task, total=total)
            progress.update(task, completed=completed, info=info)
            every = max(1, planned[0] // 20)
            if plain and completed != printed[0] and (completed % every == 0 or completed == planned[0]):
                printed[0] = completed
                err.print(f"{description} {completed}/{planned[0]} {info} [{time.perf_counter() - start:.0f} s]",
                          highlight=False)

        yield update


def loop_reporter(update: Callable[..., None], quick_label: str) -> Callable[[Any, float | None], None]:
    """An ``on_progress(progress, quick)`` callback for a front end's outer loop.

    It moves the bar made by :func:`progress_bar` (``update``), shows the last quick held-out
    figure as ``quick_label`` and, on a resumed run, says once where it resumes.
    """
    last = [""]

    def on_progress(progress: Any, quick: float | None) -> None:
        say_where_resumed(progress)
        if quick is not None:
            last[0] = f"  {quick_label} {percent(quick)}"
        update(progress.iteration, f"loss {progress.loss:.3f}{last[0]}", total=progress.iterations)

    return on_progress


def say_where_resumed(progress: Any) -> None:
    """On an outer loop's ``resume`` event, one line: from which iteration it continues."""
    if progress.event == "resume":
        err.print(f"resuming from iteration {progress.iteration} of {progress.iterations}", highlight=False)


def print_notes(notes: list[str]) -> None:
    """One yellow line on stderr per notice (a capped count, …)."""
    for note in notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)


def percent(mean: float, std: float | None = None) -> str:
    """``87.3 ± 1.2 %`` from fractions."""
    return f"{100 * mean:.1f} %" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f} %"


def points(drop: float) -> str:
    """An accuracy drop (a fraction) as a signed change in points: ``−2.5`` (a gain: ``+0.3``)."""
    return f"{-100 * drop:+.1f}".replace("-", "−")


def result_table(title: str, rows: list[tuple[str, str]]) -> Table:
    """A two-column table of labelled results."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    return table


def print_json(payload: dict) -> None:
    """One JSON object as the last line of stdout."""
    typer.echo(json.dumps(payload, sort_keys=True))
