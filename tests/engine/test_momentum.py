"""Learned inner momentum: the back-gradient matches autograd and finite differences, the unroll is
PyTorch's SGD with momentum, and the outer loop learns the momenta and resumes them exactly."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from ddsec.engine import ClassificationObjective, FixedInit, RealBatches, SyntheticSet, distill, meta_grads, unroll
from ddsec.engine.population import population_forward


@pytest.fixture
def with_momentum(tiny_synthetic):
    synthetic = tiny_synthetic.with_learned("momentum", 0.5)
    gen = torch.Generator().manual_seed(4)
    synthetic.learned["momentum"] = synthetic.learned["momentum"] + torch.randn(6, generator=gen, dtype=torch.float64)
    return synthetic


@pytest.mark.parametrize("keep_graphs", [False, True])
@pytest.mark.parametrize("labels", [False, True])
def test_momentum_gradient_matches_autograd(tiny_cnn, with_momentum, real_batch, keep_graphs, labels):
    synthetic = with_momentum.with_learnable_labels(3, confidence=0.8) if labels else with_momentum
    params = dict(tiny_cnn.named_parameters())
    hvp = meta_grads(tiny_cnn, params, synthetic, *real_batch, keep_graphs=keep_graphs)
    ref = meta_grads(tiny_cnn, params, synthetic, *real_batch, mode="autograd")
    assert hvp.learned["momentum"].shape == (6,) and hvp.learned["momentum"][1:].abs().min() > 0
    assert hvp.learned["momentum"][0] == 0  # μ_0 meets the zero velocity
    torch.testing.assert_close(hvp.fields(), ref.fields(), atol=1e-12, rtol=1e-9)


def test_momentum_gradient_matches_finite_differences(tiny_cnn, with_momentum, real_batch):
    params = dict(tiny_cnn.named_parameters())
    grad = meta_grads(tiny_cnn, params, with_momentum, *real_batch).learned["momentum"]
    eps, index = 1e-6, 3
    shifted = []
    for sign in (1, -1):
        raw = with_momentum.learned["momentum"].clone()
        raw[index] += sign * eps
        moved = with_momentum.replaced(learned={**with_momentum.learned, "momentum": raw})
        shifted.append(meta_grads(tiny_cnn, params, moved, *real_batch).loss)
    assert float((shifted[0] - shifted[1]) / (2 * eps)) == pytest.approx(float(grad[index]), rel=1e-5, abs=1e-9)


def test_unroll_is_torch_sgd_with_momentum(tiny_cnn, with_momentum):
    params = {k: v.detach().clone() for k, v in tiny_cnn.named_parameters()}
    theta = unroll(population_forward(tiny_cnn, "auto"), {k: v.unsqueeze(0) for k, v in params.items()}, with_momentum)
    weights = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    sgd = torch.optim.SGD(weights.values(), lr=0.1)
    for t, (lr, momentum) in enumerate(zip(with_momentum.lrs(), with_momentum.momenta())):
        x, y = with_momentum.batch(t)
        for group in sgd.param_groups:
            group["lr"], group["momentum"] = float(lr), float(momentum)
        sgd.zero_grad()
        torch.nn.functional.cross_entropy(functional_call(tiny_cnn, weights, (x,)), y).backward()
        sgd.step()
    for k in params:
        assert torch.allclose(theta[k][0], weights[k], atol=1e-12)


def test_outer_loop_learns_momenta_and_resumes_exactly(tiny_cnn, with_momentum, real_batch, tmp_path):
    x, y = real_batch
    objective = ClassificationObjective(tiny_cnn, FixedInit(dict(tiny_cnn.named_parameters())), RealBatches(x, y, 8))
    kwargs = dict(iterations=4, lr=0.01, seed=0)
    full = distill(objective, with_momentum, **kwargs)
    assert not torch.equal(full.synthetic.learned["momentum"][1:], with_momentum.learned["momentum"][1:])
    ckpt = tmp_path / "c.safetensors"
    distill(objective, with_momentum, **(kwargs | {"iterations": 2}), checkpoint_path=ckpt)
    resumed = distill(objective, with_momentum, **kwargs, checkpoint_path=ckpt, resume=True)
    assert resumed.resumed_from == 2
    assert torch.equal(resumed.synthetic.learned["momentum"], full.synthetic.learned["momentum"])
    assert torch.equal(resumed.synthetic.images, full.synthetic.images)


def test_momentum_must_lie_in_the_unit_interval(tiny_synthetic):
    with pytest.raises(ValueError, match="momenta must lie"):
        tiny_synthetic.with_learned("momentum", 1.0)
    with pytest.raises(ValueError, match="momentum"):
        SyntheticSet(tiny_synthetic.images, tiny_synthetic.labels,
                     {**tiny_synthetic.learned, "momentum": torch.zeros(3, dtype=torch.float64)}, 2)
