"""Atomic, resumable checkpoints of the outer loop (safetensors, no pickle).

A checkpoint holds everything the outer loop needs to continue exactly where it stopped: the
synthetic set, the Adam moments, the random generator's state, the iteration, the loss history,
the state of a front end's dual player (e.g. a Lagrange multiplier) if it has one, and a
fingerprint of the run's settings, so that resuming with other settings is refused.
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
from ddsec.engine.learned import LEARNABLES
from ddsec.engine.synthetic import SyntheticSet
from ddsec.errors import DDSecError, FormatError

CHECKPOINT_FORMAT = "ddsec.checkpoint/1"
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
        synthetic: the set being learned (images ``[S, N, C, H, W]`` and its raw learned tensors,
            stored under each setting's ``key``: ``raw_lrs``, ``raw_momenta``, ``label_logits``).
        adam: Adam's per-parameter state, keyed ``"images.exp_avg"``, ``"raw_lrs.step"`` …
        generator_state: uint8 state of the CPU ``torch.Generator`` driving all sampling.
        iteration: outer iterations completed.
        losses: float32 ``[iteration]`` outer loss per completed iteration.
        lr_scale: multiplier on the Adam learning rate left by non-finite back-offs.
        fingerprint: JSON-able settings that must match on resume.
        plan: what a time-budgeted run chose (``iterations``, ``decay_every``,
            ``seconds_per_iteration``); a resumed run keeps it instead of measuring again.
        dual: the dual player's tensors by name (see :class:`ddsec.engine.outer.Dual`); empty without one.
    """

    synthetic: SyntheticSet
    adam: dict[str, Tensor]
    generator_state: Tensor
    iteration: int
    losses: Tensor
    lr_scale: float
    fingerprint: dict
    plan: dict = field(default_factory=dict)
    dual: dict[str, Tensor] = field(default_factory=dict)


def save_checkpoint(path: str | Path, state: LoopState) -> Path:
    """Write ``state`` to ``path`` atomically (a crash leaves the previous checkpoint intact)."""
    syn = state.synthetic
    tensors = {
        "images": syn.images.detach().cpu().contiguous(),
        "labels": syn.labels.detach().cpu().contiguous(),
        **{LEARNABLES[name].key: raw.detach().cpu().contiguous() for name, raw in syn.learned.items()},
        "generator_state": state.generator_state.cpu().contiguous(),
        "losses": state.losses.detach().cpu().float().contiguous(),
        **{f"adam.{k}": v.detach().cpu().contiguous() for k, v in state.adam.items()},
        **{f"dual.{k}": v.detach().cpu().contiguous() for k, v in state.dual.items()},
    }
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "iteration": str(state.iteration),
        "epochs": str(syn.epochs),
        "lr_scale": repr(state.lr_scale),
        "fingerprint": json.dumps(state.fingerprint, sort_keys=True),
        "plan": json.dumps(state.plan, sort_keys=True),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> LoopState:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FormatError: the file is unreadable, truncated or not a ddsec checkpoint.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path), device=str(device))
        if metadata.get("format") != CHECKPOINT_FORMAT:
            raise FormatError(
                f"{path} is not a ddsec checkpoint (format {metadata.get('format')!r});"
                " delete it or point --out elsewhere"
            )
        learned = {spec.name: tensors[spec.key] for spec in LEARNABLES.values() if spec.key in tensors}
        synthetic = SyntheticSet(tensors["images"], tensors["labels"], learned, int(metadata["epochs"]))
        adam = {k.removeprefix("adam."): v for k, v in tensors.items() if k.startswith("adam.")}
        return LoopState(
            synthetic=synthetic,
            adam=adam,
            generator_state=tensors["generator_state"].cpu(),
            iteration=int(metadata["iteration"]),
            losses=tensors["losses"],
            lr_scale=float(metadata["lr_scale"]),
            fingerprint=json.loads(metadata["fingerprint"]),
            plan=json.loads(metadata.get("plan", "{}")),
            dual={k.removeprefix("dual."): v for k, v in tensors.items() if k.startswith("dual.")},
        )
    except DDSecError:
        raise
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise FormatError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'corrupt'};"
            " delete it to start over"
        ) from None
