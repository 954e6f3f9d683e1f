"""The outer loop: learning, exact resume, atomic checkpoints and the NaN guard."""

from __future__ import annotations

import pytest
import torch

from ddsec.engine import (
    ClassificationObjective,
    FixedInit,
    PopulationInit,
    RandomInit,
    RealBatches,
    SyntheticSet,
    distill,
    load_checkpoint,
    stack_params,
)
from ddsec.errors import DDSecError, NonFiniteError
from ddsec.models_zoo import create_model


def make_tiny_cnn(seed: int = 0) -> torch.nn.Module:
    return create_model("test_cnn", num_classes=3, in_chans=1, image_size=6, init="xavier", seed=seed).double().eval()


def blobs(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three separable classes of 1×6×6 images (class c is bright in column block c)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = 0.3 * torch.randn(n, 1, 6, 6, generator=gen, dtype=torch.float64)
    for c in range(3):
        images[labels == c, :, :, 2 * c : 2 * c + 2] += 1.0
    return images, labels


def objective(init_kind: str = "random") -> ClassificationObjective:
    model = make_tiny_cnn()
    init = RandomInit(model, "xavier") if init_kind == "random" else FixedInit(dict(model.named_parameters()))
    x, y = blobs()
    return ClassificationObjective(model, init, RealBatches(x, y, batch_size=32))


def start_set() -> SyntheticSet:
    return SyntheticSet.create(num_classes=3, ipc=1, steps=2, epochs=2, image_shape=(1, 6, 6), init_lr=0.3,
                               generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def test_distill_lowers_outer_loss():
    result = distill(objective("fixed"), start_set(), iterations=40, n_models=1, lr=0.05, seed=0)
    assert result.losses.shape == (40,)
    assert result.losses[-5:].mean() < 0.6 * result.losses[:5].mean()
    assert (result.synthetic.lrs() > 0).all()


def test_resume_reproduces_uninterrupted_run(tmp_path):
    ckpt = tmp_path / "run.ckpt.safetensors"
    full = distill(objective(), start_set(), iterations=6, n_models=2, lr=0.05, seed=7)
    distill(objective(), start_set(), iterations=3, n_models=2, lr=0.05, seed=7, checkpoint_path=ckpt,
            checkpoint_every=3, fingerprint={"ipc": 1})
    assert load_checkpoint(ckpt).iteration == 3
    resumed = distill(objective(), start_set(), iterations=6, n_models=2, lr=0.05, seed=7, checkpoint_path=ckpt,
                      checkpoint_every=3, resume=True, fingerprint={"ipc": 1})
    assert resumed.resumed_from == 3
    assert torch.equal(resumed.synthetic.images, full.synthetic.images)
    assert torch.equal(resumed.synthetic.learned["lr"], full.synthetic.learned["lr"])
    assert torch.equal(resumed.losses, full.losses)
    assert not list(tmp_path.glob(".*.tmp"))


def test_resume_refuses_other_settings(tmp_path):
    ckpt = tmp_path / "run.ckpt.safetensors"
    distill(objective(), start_set(), iterations=2, checkpoint_path=ckpt, checkpoint_every=1, fingerprint={"ipc": 1})
    with pytest.raises(DDSecError, match="other settings.*ipc"):
        distill(objective(), start_set(), iterations=4, checkpoint_path=ckpt, resume=True, fingerprint={"ipc": 2})


def corrupt_batch(obj: ClassificationObjective, call: int, value: float) -> ClassificationObjective:
    """Make the ``call``-th real batch of ``obj`` all ``value`` (NaN or inf)."""
    calls = {"n": 0}
    sample = obj.batches.sample

    def corrupted(generator):
        calls["n"] += 1
        x, y = sample(generator)
        return (x * value, y) if calls["n"] == call else (x, y)

    obj.batches.sample = corrupted
    return obj


def test_nan_stops_with_last_good_state_saved(tmp_path):
    ckpt = tmp_path / "run.ckpt.safetensors"
    obj = corrupt_batch(objective("fixed"), call=3, value=float("nan"))
    with pytest.raises(NonFiniteError, match="iteration 3.*saved in"):
        distill(obj, start_set(), iterations=10, checkpoint_path=ckpt, checkpoint_every=100)
    state = load_checkpoint(ckpt)
    assert state.iteration == 2
    assert torch.isfinite(state.state["images"]).all()


def test_backoff_skips_bad_iteration_and_halves_lr():
    obj = corrupt_batch(objective("fixed"), call=2, value=float("inf"))
    events = []
    result = distill(obj, start_set(), iterations=4, lr=0.05, on_nonfinite="backoff",
                     on_progress=lambda p: events.append((p.event, p.lr)))
    assert result.backoffs == 1 and result.losses.shape == (4,)
    assert torch.isfinite(result.synthetic.images).all()
    assert [e for e, _ in events].count("backoff") == 1
    assert events[-1][1] == pytest.approx(0.025)


def test_interrupt_writes_checkpoint(tmp_path):
    ckpt = tmp_path / "run.ckpt.safetensors"

    def interrupt(progress):
        if progress.iteration == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(objective(), start_set(), iterations=10, checkpoint_path=ckpt, checkpoint_every=100, on_progress=interrupt)
    assert load_checkpoint(ckpt).iteration == 2


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    ckpt = tmp_path / "run.ckpt.safetensors"
    ckpt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DDSecError, match="checkpoint"):
        distill(objective(), start_set(), iterations=2, checkpoint_path=ckpt, resume=True)


def test_distributions():
    model = make_tiny_cnn()
    gen = torch.Generator().manual_seed(0)
    a = RandomInit(model, "kaiming").sample(3, gen)
    assert a["0.weight"].shape == (3, 4, 1, 3, 3) and not torch.equal(a["0.weight"][0], a["0.weight"][1])
    assert torch.equal(a["0.bias"], torch.zeros_like(a["0.bias"]))
    fixed = FixedInit(dict(model.named_parameters())).sample(2, gen)
    assert torch.equal(fixed["4.weight"][0], fixed["4.weight"][1])
    population = stack_params([make_tiny_cnn(seed=s) for s in range(5)])
    drawn = PopulationInit(population).sample(3, gen)
    firsts = {float(w.flatten()[0]) for w in drawn["0.weight"]}
    assert len(firsts) == 3 and firsts <= {float(w.flatten()[0]) for w in population["0.weight"]}
    with pytest.raises(ValueError, match="population of 5"):
        PopulationInit(population).sample(6, gen)
    with pytest.raises(ValueError, match="scheme"):
        RandomInit(model, "orthogonal")


def test_resume_without_a_checkpoint_never_starts_fresh(tmp_path):
    with pytest.raises(DDSecError, match="there is no checkpoint .*missing.ckpt to resume"):
        distill(objective(), start_set(), iterations=2, checkpoint_path=tmp_path / "missing.ckpt", resume=True)
    with pytest.raises(DDSecError, match="there is no checkpoint None"):
        distill(objective(), start_set(), iterations=2, resume=True)


def test_checkpoints_by_time_as_well_as_by_iterations(tmp_path, monkeypatch):
    """With slow iterations (a clock that moves 25 s as each iteration reports) a 60-s interval
    checkpoints every third iteration although ``checkpoint_every`` is 100; a resumed run reports
    where it resumes."""
    import ddsec.engine.checkpoint as checkpoint

    clock = [0.0]
    monkeypatch.setattr(checkpoint.time, "monotonic", lambda: clock[0])
    events: list[tuple[int, str]] = []

    def tick(progress) -> None:
        clock[0] += 25.0
        events.append((progress.iteration, progress.event))

    ckpt = tmp_path / "run.ckpt"
    distill(objective(), start_set(), iterations=9, checkpoint_path=ckpt, checkpoint_every=100,
            checkpoint_seconds=60.0, on_progress=tick)
    # 75 s after the start (iteration 4) and after that checkpoint (iteration 7), then the last iteration
    assert [i for i, event in events if event == "checkpoint"] == [4, 7, 9]
    events.clear()
    distill(objective(), start_set(), iterations=11, checkpoint_path=ckpt, checkpoint_every=100, resume=True,
            on_progress=tick)
    assert events[0] == (9, "resume") and events[-1] == (11, "checkpoint")
