"""``--nproc N``: run the current command as ``N`` processes under ``torchrun``.

``ddsec distill --nproc 2 …`` reads better than ``torchrun --standalone --nproc-per-node 2 -m
ddsec distill …`` and does the same: the process replaces itself with ``torchrun`` (one node,
loopback rendezvous), which starts ``N`` copies of the command without ``--nproc``. Unless
``OMP_NUM_THREADS`` is set, each process gets an equal share of the CPU cores.
"""

from __future__ import annotations

import os
import sys

import typer

from ddsec.engine import world
from ddsec.errors import DDSecError

NPROC = typer.Option(1, "--nproc", help="Run as N data-parallel processes (relaunches under torchrun: gloo on CPU, NCCL on GPUs).")


def without_nproc(argv: list[str]) -> list[str]:
    """``argv`` minus every ``--nproc N`` / ``--nproc=N``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The ``torchrun`` command line that runs ``ddsec ARGV`` (``argv`` without the program) on ``nproc`` processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "ddsec", *without_nproc(argv)]


def relaunch(nproc: int) -> None:
    """Replace this process with ``torchrun`` running ``nproc`` copies of the command; nothing for one
    process, or inside a distributed run already.

    Raises:
        DDSecError: ``nproc`` < 1.
    """
    if nproc < 1:
        raise DDSecError(f"--nproc must be at least 1, got {nproc}")
    if nproc == 1 or world().size > 1:
        return
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    command = torchrun_command(nproc, sys.argv[1:])
    os.execve(command[0], command, env)
