"""Distributed runs on gloo: two processes give what one process seeing both their samples gives.

Every test here starts real processes on loopback (torch.multiprocessing, ``spawn``) or through
``torchrun``; workers write their results to files that the test compares.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from ddsec.engine import (
    ClassificationObjective,
    PeerLostError,
    PopulationInit,
    RandomInit,
    RealBatches,
    SyntheticSet,
    World,
    distill,
    load_checkpoint,
    world,
)
from ddsec.engine.distributed import all_reduce_mean, iteration_seed, my_share
from ddsec.export import load_distilled
from ddsec.models_zoo import create_model, load_population, population_metadata, save_population
from ddsec.models_zoo.population import shard_name
from ddsec.models_zoo.train import TrainRecipe
from ddsec.models_zoo.zoo import train_entry

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

N_MODELS = 4


def tiny_cnn() -> torch.nn.Module:
    return create_model("test_cnn", num_classes=3, in_chans=1, image_size=6, init="xavier", seed=0).double().eval()


def blobs(n: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 3
    images = 0.3 * torch.randn(n, 1, 6, 6, generator=gen, dtype=torch.float64)
    for c in range(3):
        images[labels == c, :, :, 2 * c : 2 * c + 2] += 1.0
    return images, labels


def write_population(path: Path) -> Path:
    """``N_MODELS`` random tiny CNNs, two per shard."""
    model = tiny_cnn()
    gen = torch.Generator().manual_seed(5)
    params = RandomInit(model, "xavier").sample(N_MODELS, gen)
    for shard in range(N_MODELS // 2):
        part = {k: v[2 * shard : 2 * shard + 2] for k, v in params.items()}
        save_population(path / shard_name(shard), part, model="test_cnn", dataset="blobs", num_classes=3, in_chans=1,
                        image_size=6, seeds=[2 * shard, 2 * shard + 1], test_acc=[0.5, 0.5], total=N_MODELS)
    return path


def start_set() -> SyntheticSet:
    return SyntheticSet.create(num_classes=3, ipc=1, steps=2, epochs=2, image_shape=(1, 6, 6), init_lr=0.3,
                               generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def run_distill(population: Path, *, n_models: int, iterations: int, checkpoint: Path | None = None,
                resume: bool = False, objective_wrapper=None, dual=None) -> SyntheticSet:
    """Distil over this process's share of ``population``; every real batch is the whole data set."""
    here = world()
    x, y = blobs()
    init = PopulationInit(load_population(population, share=(here.rank, here.size)))
    objective = ClassificationObjective(tiny_cnn(), init, RealBatches(x, y, batch_size=len(x)))
    if objective_wrapper is not None:
        objective = objective_wrapper(objective)
    result = distill(objective, start_set(), iterations=iterations, n_models=n_models, lr=0.05, seed=1,
                     checkpoint_path=checkpoint, checkpoint_every=1, resume=resume, dual=dual)
    return result.synthetic


def join(rank: int, size: int, store: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)


def worker_distill(rank: int, store: Path, population: Path, out: Path) -> None:
    join(rank, 2, store)
    synthetic = run_distill(population, n_models=N_MODELS // 2, iterations=2)
    save_file({"images": synthetic.images, "lr": synthetic.learned["lr"]}, str(out / f"rank{rank}.safetensors"))
    dist.destroy_process_group()


class DiesOnRankOne:
    """Wraps an objective; rank 1's process exits abruptly when asked for its third real batch."""

    def __init__(self, objective: ClassificationObjective) -> None:
        self.model, self.init, self.inner, self.calls = objective.model, objective.init, objective, 0

    def real_batch(self, generator: torch.Generator):
        self.calls += 1
        if world().rank == 1 and self.calls == 3:
            os._exit(3)
        return self.inner.real_batch(generator)

    def outer_loss(self, logits, targets):
        return self.inner.outer_loss(logits, targets)


class RankDual:
    """A dual player whose update records its rank and iteration: every rank must end with rank 0's state."""

    period = 1

    def __init__(self) -> None:
        self.state = {"value": torch.zeros((), dtype=torch.float64)}

    def update(self, iteration: int, synthetic: SyntheticSet) -> None:
        self.state["value"].fill_(100 * world().rank + iteration + 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state["value"].copy_(state["value"])


def worker_dual(rank: int, store: Path, population: Path, out: Path) -> None:
    join(rank, 2, store)
    dual = RankDual()
    run_distill(population, n_models=1, iterations=3, dual=dual)
    (out / f"dual{rank}.txt").write_text(str(float(dual.state["value"])))
    dist.destroy_process_group()


def worker_dies(rank: int, store: Path, population: Path, out: Path) -> None:
    join(rank, 2, store)
    try:
        run_distill(population, n_models=1, iterations=5, checkpoint=out / "run.ckpt", objective_wrapper=DiesOnRankOne)
    except PeerLostError as exc:
        (out / "error.txt").write_text(str(exc))


def spawn(monkeypatch, worker, *args) -> list[int]:
    """Run ``worker(rank, *args)`` in 2 fresh processes; their exit codes."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))  # children import this module by name
    context = mp.get_context("spawn")
    processes = [context.Process(target=worker, args=(rank, *args)) for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    return [process.exitcode for process in processes]


def test_two_processes_equal_one_process_seeing_the_union(tmp_path, monkeypatch):
    population = write_population(tmp_path / "pop")
    assert spawn(monkeypatch, worker_distill, tmp_path / "store", population, tmp_path) == [0, 0]
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    single = run_distill(population, n_models=N_MODELS, iterations=2)
    for name, want in (("images", single.images), ("lr", single.learned["lr"])):
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0)  # ranks stay in lockstep
        torch.testing.assert_close(ranks[0][name], want, rtol=1e-9, atol=1e-12)
    assert not torch.equal(ranks[0]["images"], start_set().images)


def test_the_dual_player_updates_on_rank_zero_and_every_rank_takes_its_state(tmp_path, monkeypatch):
    population = write_population(tmp_path / "pop")
    assert spawn(monkeypatch, worker_dual, tmp_path / "store", population, tmp_path) == [0, 0]
    assert [float((tmp_path / f"dual{rank}.txt").read_text()) for rank in range(2)] == [3.0, 3.0]


def test_a_dead_rank_ends_the_run_with_a_clear_error_and_a_resumable_checkpoint(tmp_path, monkeypatch):
    population = write_population(tmp_path / "pop")
    codes = spawn(monkeypatch, worker_dies, tmp_path / "store", population, tmp_path)
    assert codes == [0, 3]
    message = (tmp_path / "error.txt").read_text()
    assert "rank 0 lost the other processes" in message and "--resume" in message
    state = load_checkpoint(tmp_path / "run.ckpt")
    assert state.iteration == 2 and state.losses.shape == (2,)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    resumed = run_distill(population, n_models=2, iterations=4, checkpoint=tmp_path / "run.ckpt", resume=True)
    assert load_checkpoint(tmp_path / "run.ckpt").iteration == 4
    assert torch.isfinite(resumed.images).all()


def test_population_shares_partition_the_models_shard_by_shard(tmp_path):
    population = write_population(tmp_path / "pop")
    whole = load_population(population)
    shares = [load_population(population, share=(rank, 3)) for rank in range(3)]
    for rank, share in enumerate(shares):
        for name, tensor in share.items():
            torch.testing.assert_close(tensor, whole[name][rank::3])
    assert [len(my_share(N_MODELS, World(r, 3))) for r in range(3)] == [2, 1, 1]


def test_alone_the_collectives_do_nothing():
    tensors = [torch.ones(2), torch.zeros(3)]
    assert all_reduce_mean(tensors) is tensors
    here = world()
    assert (here.rank, here.size, here.is_main) == (0, 1, True)
    seeds = {iteration_seed(7, i, World(r, 2)) for i in range(50) for r in range(2)}
    assert len(seeds) == 100


def torchrun(*args: str, env: dict) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "ddsec"]
    return subprocess.run([*launcher, *args], env=dict(os.environ, OMP_NUM_THREADS="1", **env),
                          capture_output=True, text=True, timeout=300)


def test_population_training_across_two_processes_writes_the_single_process_files(tmp_path):
    two = torchrun("zoo", "train", "--dataset", "digits", "--model", "test_mlp", "--count", "6", "--heldout", "2",
                   "--group", "2", "--steps", "20", "--quiet", env={"DDSEC_ZOO": str(tmp_path / "two")})
    assert two.returncode == 0, two.stderr[-2000:]
    train_entry("digits-test_mlp", dataset="digits", model_name="test_mlp", count=6, heldout=2, group=2,
                recipe=TrainRecipe(steps=20), root=tmp_path / "one")
    for role in ("train", "heldout"):
        one_dir, two_dir = (tmp_path / zoo / "digits-test_mlp" / role for zoo in ("one", "two"))
        files = sorted(p.name for p in one_dir.iterdir())
        assert files == sorted(p.name for p in two_dir.iterdir()) and len(files) == (3 if role == "train" else 1)
        for name in files:
            assert population_metadata(one_dir / name)["seeds"] == population_metadata(two_dir / name)["seeds"]
            a, b = load_file(str(one_dir / name)), load_file(str(two_dir / name))
            for key in a:
                torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_distill_on_two_processes_exports_once_from_rank_zero(tmp_path):
    out = tmp_path / "set.safetensors"
    run = subprocess.run([sys.executable, "-m", "ddsec", "distill", "--nproc", "2", "--iterations", "2", "--eval-models",
                          "2", "--out", str(out), "--json"], env=dict(os.environ, OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    payload = json.loads(run.stdout.strip().splitlines()[-1])
    assert payload["output"] == str(out) and payload["eval"]["models"] == 2
    assert run.stdout.count('"output"') == 1  # rank 1 printed nothing
    assert load_distilled(out).meta.dataset == "digits"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.safetensors"]  # no checkpoint or temp file left


def test_nproc_relaunches_the_same_command_under_torchrun():
    from ddsec.cli.launch import torchrun_command

    command = torchrun_command(2, ["distill", "--nproc", "2", "--iterations", "3", "--nproc=2", "--json"])
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m"]
    assert command[6:] == ["ddsec", "distill", "--iterations", "3", "--json"]


@pytest.mark.parametrize("args, message", [
    (["distill", "--nproc", "0"], "--nproc must be at least 1"),
    (["distill", "--method", "dm", "--nproc", "2"], "--nproc"),
    (["zoo", "train", "--nproc", "-1"], "--nproc must be at least 1"),
])
def test_bad_nproc_is_one_line(args, message):
    from typer.testing import CliRunner

    from ddsec.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
