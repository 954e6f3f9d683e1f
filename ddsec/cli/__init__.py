"""The ``ddsec`` command line (typer + rich): the only part of ddsec that prints.

Every command turns :class:`ddsec.DDSecError` into one line on stderr and exit code 1; an
interrupted run says how to resume and exits with 130.
"""

from __future__ import annotations

import signal
import warnings

import typer

from ddsec import __version__
from ddsec.cli import adapt_cmd, detect_cmd, distill_cmd, eval_cmd, poison_cmd, show_cmd, stress_cmd, zoo_cmd
from ddsec.cli.render import err, out, print_notes
from ddsec.engine import CompileFallback
from ddsec.engine.distributed import init_from_env, shutdown
from ddsec.errors import DDSecError

app = typer.Typer(
    name="ddsec",
    help="Dataset distillation for security research (Wang et al., arXiv 1811.10959).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        out.print(f"ddsec {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print ddsec's version and exit."),
) -> None:
    """Dataset distillation for security research (Wang et al., arXiv 1811.10959)."""


app.command("distill")(distill_cmd.distill)
app.command("eval")(eval_cmd.evaluate)
app.command("show")(show_cmd.show)
app.command("poison")(poison_cmd.poison)
app.command("stress")(stress_cmd.stress)
app.command("detect")(detect_cmd.detect)
app.command("adapt")(adapt_cmd.adapt)
app.add_typer(zoo_cmd.zoo, name="zoo")


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # a killed run (SIGTERM) checkpoints and exits like Ctrl-C


def _note_fallback(message, category, filename, lineno, file=None, line=None) -> None:
    """A :class:`~ddsec.engine.CompileFallback` as one note line; other warnings as Python prints them."""
    if issubclass(category, CompileFallback):
        print_notes([str(message)])
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main() -> None:
    """Console-script entry point; SIGTERM is handled like Ctrl-C (checkpoint, exit 130).

    Under ``torchrun`` the process joins the distributed run first; ranks other than 0 print
    nothing but their own errors. A compile fallback prints one note line.
    """
    signal.signal(signal.SIGTERM, _terminate)
    warnings.showwarning = _note_fallback
    try:
        here = init_from_env()
    except (DDSecError, RuntimeError, ValueError) as exc:
        err.print(f"[bold red]error:[/] cannot join the distributed run ({str(exc).splitlines()[0]});"
                  " launch with `torchrun --nproc-per-node N -m ddsec …`", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    if not here.is_main:
        out.quiet = err.quiet = True
    try:
        app()
    finally:
        shutdown()
