"""Atomic, resumable checkpoints of the outer loop (safetensors, no pickle).

A checkpoint holds everything :func:`ddsec.engine.loop.run_loop` needs to continue exactly where
it stopped: the method's whole state as named tensors (DD: the synthetic set, the Adam moments,
a dual player's state; DC/DSA/DM: the images and their momentum), the random generator's state,
the iteration, the loss history, a time budget's plan and a fingerprint of the run's settings, so
that resuming with other settings is refused. One format for every method.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from ddsec._io import atomic_path
from ddsec.errors import DDSecError, FormatError

CHECKPOINT_FORMAT = "ddsec.checkpoint/2"
"""Format 2: the method's state under its own names (format 1 held DD's set in fixed fields)."""
_RESERVED = ("generator_state", "losses")
DEFAULT_CHECKPOINT_SECONDS = 60.0
"""A run writes a checkpoint at least this often (wall-clock seconds), however slow its iterations."""


@dataclass
class CheckpointSchedule:
    """When an outer loop checkpoints: every ``every`` iterations, and whenever ``seconds`` of
    wall-clock time have passed since the last checkpoint (``None``: by iterations only), so a
    killed run loses at most that much time.
    """

    every: int
    seconds: float | None = DEFAULT_CHECKPOINT_SECONDS
    last: float = field(init=False)

    def __post_init__(self) -> None:
        self.last = time.monotonic()
        if self.every < 1:
            raise ValueError(f"checkpoints every {self.every} iterations: must be at least 1")
        if self.seconds is not None and not self.seconds > 0:
            raise DDSecError(f"--checkpoint-seconds must be positive, got {self.seconds}")

    def due(self, done: int) -> bool:
        """Whether to checkpoint after ``done`` completed iterations."""
        late = self.seconds is not None and time.monotonic() - self.last >= self.seconds
        return done % self.every == 0 or late

    def saved(self) -> None:
        """Note that a checkpoint was just written."""
        self.last = time.monotonic()


def refuse_other_settings(what: str, stored: dict, fingerprint: dict) -> None:
    """Refuse to resume ``what`` (e.g. ``"checkpoint run.ckpt"``) when its ``stored`` fingerprint
    differs from the run's ``fingerprint``.

    Raises:
        DDSecError: one line naming every setting that differs.
    """
    changed = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
    if changed:
        raise DDSecError(f"{what} was made with other settings ({', '.join(changed)}); rerun with the same options,"
                         " or start over with --force")


def require_checkpoint(path: str | Path | None) -> Path:
    """``path`` as a :class:`Path` when a run may resume from it.

    Raises:
        DDSecError: there is no checkpoint to resume (never a silent fresh start).
    """
    if path is None or not Path(path).exists():
        raise DDSecError(f"--resume: there is no checkpoint {path} to resume (a finished run removes it);"
                         " run the command without --resume to start")
    return Path(path)


@dataclass
class LoopState:
    """The outer loop's full state.

    Attributes:
        state: the method's tensors by name (see :class:`ddsec.engine.loop.Method`), e.g.
            ``images``, ``raw_lrs``, ``adam.images.exp_avg``, ``dual.lagrange``.
        generator_state: uint8 state of the CPU ``torch.Generator`` driving all sampling, at the
            start of the next iteration.
        iteration: outer iterations completed.
        losses: float32 ``[iteration]`` outer loss per completed iteration.
        fingerprint: JSON-able settings that must match on resume.
        plan: what a time-budgeted run chose (``iterations``, ``decay_every``,
            ``seconds_per_iteration``); a resumed run keeps it instead of measuring again.
    """

    state: dict[str, Tensor]
    generator_state: Tensor
    iteration: int
    losses: Tensor
    fingerprint: dict
    plan: dict = field(default_factory=dict)


def save_checkpoint(path: str | Path, loop: LoopState) -> Path:
    """Write ``loop`` to ``path`` atomically (a crash leaves the previous checkpoint intact)."""
    clash = sorted(set(loop.state) & set(_RESERVED))
    if clash:
        raise ValueError(f"a method's state may not use the names {clash}")
    tensors = {
        **{name: value.detach().cpu().contiguous() for name, value in loop.state.items()},
        "generator_state": loop.generator_state.cpu().contiguous(),
        "losses": loop.losses.detach().cpu().float().contiguous(),
    }
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "iteration": str(loop.iteration),
        "fingerprint": json.dumps(loop.fingerprint, sort_keys=True),
        "plan": json.dumps(loop.plan, sort_keys=True),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> LoopState:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FormatError: the file is unreadable, truncated, not a ddsec checkpoint, or from an older ddsec.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path), device=str(device))
        found = metadata.get("format")
        if found == "ddsec.checkpoint/1":
            raise FormatError(f"{path} was written by an older ddsec (format {found}) and cannot be resumed;"
                              " start over with --force")
        if found != CHECKPOINT_FORMAT:
            raise FormatError(f"{path} is not a ddsec checkpoint (format {found!r}); delete it or point --out elsewhere")
        return LoopState(
            state={name: value for name, value in tensors.items() if name not in _RESERVED},
            generator_state=tensors["generator_state"].cpu(),
            iteration=int(metadata["iteration"]),
            losses=tensors["losses"],
            fingerprint=json.loads(metadata["fingerprint"]),
            plan=json.loads(metadata.get("plan", "{}")),
        )
    except DDSecError:
        raise
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise FormatError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'corrupt'};"
            " delete it to start over"
        ) from None
