"""Data-parallel runs on ``torch.distributed``: which process this is, and averaging across processes.

The paper's attack and adaptation runs sampled from populations of 2,000 pretrained models,
more than one GPU holds (Wang et al., arXiv 1811.10959, §3.4–3.5); its authors hand-rolled a
multi-process scheme. ddsec uses PyTorch's own: launched by ``torchrun``, every process (rank)
samples its own initial weights (its share of a population) and its own real batches, the
meta-gradients are averaged with one ``all_reduce`` before the single outer update, so every rank
holds the same images and step sizes. Backends: gloo on CPU, NCCL for CUDA tensors.

Outside ``torchrun`` (or with one process) every function here is a no-op, so single-process
code pays nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from ddsec.errors import DDSecError

TIMEOUT = timedelta(minutes=30)
"""How long a collective waits for a silent peer before the run ends."""


class PeerLostError(DDSecError):
    """Another process of a distributed run died or stopped answering."""


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` processes (0 of 1 when alone)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints and exports and prints progress."""
        return self.rank == 0


def world() -> World:
    """The current process group's rank and size, or ``World()`` outside one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def init_from_env() -> World:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE > 1``).

    gloo serves CPU tensors; when CUDA is available NCCL serves CUDA tensors and each process
    takes the GPU of its ``LOCAL_RANK``. Does nothing for a single process or when already joined.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return world()
    if not dist.is_available():
        raise DDSecError("this PyTorch build has no torch.distributed; run with one process")
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend, timeout=TIMEOUT)
    return world()


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _collective(name: str, call) -> None:
    try:
        call()
    except RuntimeError as exc:  # gloo/NCCL report a dead or silent peer as RuntimeError subclasses
        raise PeerLostError(
            f"rank {world().rank} lost the other processes during {name} ({str(exc).splitlines()[0][:120]});"
            " rerun the same command with --resume to continue from the last checkpoint"
        ) from None


def all_reduce_mean(tensors: list[Tensor]) -> list[Tensor]:
    """The element-wise mean of each tensor over all ranks, in one collective call.

    Args:
        tensors: same dtype and device on every rank, matching shapes across ranks.

    Returns:
        New tensors of the same shapes (the inputs themselves when alone).

    Raises:
        PeerLostError: a peer died or timed out.
    """
    size = world().size
    if size == 1:
        return tensors
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    _collective("all_reduce", lambda: dist.all_reduce(flat))
    flat /= size
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def broadcast_(tensors: list[Tensor]) -> None:
    """Overwrite each tensor in place with rank 0's copy (to start every rank from one state)."""
    if world().size == 1:
        return
    for tensor in tensors:
        with torch.no_grad():
            _collective("broadcast", lambda t=tensor: dist.broadcast(t, src=0))


def barrier() -> None:
    """Wait until every rank gets here."""
    if world().size > 1:
        _collective("barrier", dist.barrier)


def iteration_seed(seed: int, iteration: int, here: World) -> int:
    """A distinct seed per ``(iteration, rank)``: ranks draw different samples, and a resumed run
    (with any number of processes) needs no saved generator state."""
    return (seed % 2**31) * 2**32 + iteration * here.size + here.rank


def my_share(count: int, here: World | None = None) -> list[int]:
    """The indices of ``count`` items (models, shards) that this rank owns: ``rank, rank + size, …``."""
    here = here or world()
    return list(range(here.rank, count, here.size))
