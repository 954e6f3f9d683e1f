"""The checkpointed back-gradient pass (``theta_every``): every k-th θ_t kept, each segment's forward
recomputed on the way back. In float64 it gives the gradients of keeping every θ_t and of autograd,
for every inner optimizer, learned labels and momenta, a population and a victim plan with clean
steps; the tape holds at most ⌈T/k⌉ + k of the θ_t at once; a resumed outer loop may change it."""

from __future__ import annotations

import math
import weakref

import pytest
import torch

from ddsec.engine import (
    SGD,
    Adam,
    ClassificationObjective,
    FixedInit,
    RealBatches,
    distill,
    meta_grads,
    stack_params,
)
from ddsec.engine.segments import ThetaTape, segment_length


def assert_same(a, b, rtol: float) -> None:
    """Every field of two :class:`MetaGradient` equal to 1e-12 (absolute) and ``rtol``."""
    assert a.fields().keys() == b.fields().keys()
    for name, x in a.fields().items():
        torch.testing.assert_close(x, b.fields()[name], atol=1e-12, rtol=rtol)


@pytest.fixture(params=["sgd", "population", "momentum-labels", "adam", "victim-sgd", "victim-adam"])
def case(request, tiny_cnn, make_cnn, tiny_synthetic, victim_plan):
    """``(model, params, synthetic, keywords of meta_grads)`` for one inner setting."""
    params = dict(tiny_cnn.named_parameters())
    name = request.param
    if name == "population":
        return tiny_cnn, stack_params([tiny_cnn, make_cnn(seed=5)]), tiny_synthetic, {}
    if name == "momentum-labels":
        synthetic = tiny_synthetic.with_learned("momentum", 0.5).with_learnable_labels(3, confidence=0.8)
        return tiny_cnn, params, synthetic, {}
    if name == "adam":
        return tiny_cnn, params, tiny_synthetic, {"optimizer": Adam(weight_decay=1e-2)}
    if name.startswith("victim"):
        optimizer = SGD(momentum=0.9, weight_decay=5e-2) if name == "victim-sgd" else Adam()
        synthetic = tiny_synthetic.with_learnable_labels(3, confidence=0.8)
        return tiny_cnn, params, synthetic, {"optimizer": optimizer, "plan": victim_plan}
    return tiny_cnn, params, tiny_synthetic, {}


@pytest.mark.parametrize("keep_graphs", [False, True])
@pytest.mark.parametrize("theta_every", [2, 4, "auto", 100])  # T is 6 (5 for the victim plan)
def test_checkpointed_gradients_equal_full_storage_and_autograd(case, real_batch, theta_every, keep_graphs):
    model, params, synthetic, kwargs = case
    checkpointed = meta_grads(model, params, synthetic, *real_batch, theta_every=theta_every, keep_graphs=keep_graphs,
                              **kwargs)
    full = meta_grads(model, params, synthetic, *real_batch, keep_graphs=keep_graphs, **kwargs)
    reference = meta_grads(model, params, synthetic, *real_batch, mode="autograd", **kwargs)
    assert checkpointed.images.abs().max() > 0 and checkpointed.learned["lr"].abs().max() > 0
    assert_same(checkpointed, full, rtol=0)
    assert_same(checkpointed, reference, rtol=1e-9)


def test_segment_length():
    assert segment_length(None, 30) is None
    assert [segment_length("auto", steps) for steps in (1, 2, 6, 30, 100)] == [None, 2, 3, 6, 10]
    assert segment_length(1, 30) is None and segment_length(4, 30) == 4
    for bad in (0, -2, "often", True, 2.5):
        with pytest.raises(ValueError, match="theta_every must be"):
            segment_length(bad, 30)


def test_theta_every_needs_hvp(tiny_cnn, tiny_synthetic, real_batch):
    with pytest.raises(ValueError, match="theta_every applies to mode='hvp' only"):
        meta_grads(tiny_cnn, dict(tiny_cnn.named_parameters()), tiny_synthetic, *real_batch, mode="autograd",
                   theta_every=2)


def walk(steps: int, every: int | None, keep_graphs: bool) -> tuple[list, int, list[int]]:
    """A toy unroll through :class:`ThetaTape`: ``(the (θ_t, s_t) popped for t = T−1 … 0, the most
    θ_t alive at once, the steps whose graph was popped)``."""
    alive: weakref.WeakSet = weakref.WeakSet()
    peak = [0]

    def step(t, theta, state, graph):
        new = (theta[0] * 0.9 + t,)
        alive.add(new[0])
        peak[0] = max(peak[0], len(alive))
        return new, (new[0] + (state[0] if state else 0),), t if graph else None

    tape = ThetaTape(step, steps, every, keep_graphs)
    theta0 = (torch.ones(3),)
    alive.add(theta0[0])
    tape.unroll(theta0)
    popped, graphs = [], []
    for t in reversed(range(steps)):
        theta, state, graph = tape.pop(t)
        popped.append((theta[0].clone(), tuple(s.clone() for s in state)))
        if graph is not None:
            assert graph == t
            graphs.append(t)
        peak[0] = max(peak[0], len(alive))
    return popped, peak[0], graphs


@pytest.mark.parametrize("steps", [30, 31])
def test_tape_replays_the_forward_and_keeps_sqrt_t_thetas(steps):
    every = segment_length("auto", steps)
    full, full_peak, full_graphs = walk(steps, None, keep_graphs=True)
    popped, peak, graphs = walk(steps, every, keep_graphs=True)
    for (a, s), (b, r) in zip(popped, full):
        assert torch.equal(a, b) and len(s) == len(r) and all(torch.equal(x, y) for x, y in zip(s, r))
    assert full_peak == steps + 1 and full_graphs == list(reversed(range(steps)))
    assert peak <= math.ceil(steps / every) + every + 1, peak
    # each step's graph once, built with its segment, except for a last segment of one step (a checkpoint)
    assert graphs == [t for t in reversed(range(steps)) if not (t == steps - 1 and t % every == 0)]
    assert walk(steps, every, keep_graphs=False)[2] == []


def test_outer_loop_resumes_with_another_theta_every(tiny_cnn, tiny_synthetic, real_batch, tmp_path):
    x, y = real_batch
    objective = ClassificationObjective(tiny_cnn, FixedInit(dict(tiny_cnn.named_parameters())), RealBatches(x, y, 8))
    kwargs = dict(iterations=4, lr=0.01, seed=0)
    full = distill(objective, tiny_synthetic, **kwargs)
    ckpt = tmp_path / "c.safetensors"
    distill(objective, tiny_synthetic, **(kwargs | {"iterations": 2}), theta_every=2, checkpoint_path=ckpt)
    resumed = distill(objective, tiny_synthetic, **kwargs, theta_every="auto", keep_graphs=True, checkpoint_path=ckpt,
                      resume=True)
    assert resumed.resumed_from == 2
    torch.testing.assert_close(resumed.synthetic.images, full.synthetic.images, atol=1e-12, rtol=0)
    torch.testing.assert_close(resumed.synthetic.learned["lr"], full.synthetic.learned["lr"], atol=1e-12, rtol=0)
