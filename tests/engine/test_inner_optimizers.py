"""Inner optimizers as values: the unroll is torch.optim's SGD (momentum, weight decay) and Adam,
and the back-gradient pass derived from each optimizer's update agrees with autograd in float64."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from ddsec.engine import SGD, Adam, meta_grads, unroll
from ddsec.engine.population import population_forward

OPTIMIZERS = {
    "sgd-weight-decay": (SGD(weight_decay=5e-2), torch.optim.SGD, {"weight_decay": 5e-2}),
    "sgd-momentum-weight-decay": (SGD(momentum=0.9, weight_decay=5e-2), torch.optim.SGD,
                                  {"momentum": 0.9, "weight_decay": 5e-2}),
    "adam": (Adam(), torch.optim.Adam, {}),
    "adam-weight-decay": (Adam(betas=(0.5, 0.99), weight_decay=1e-2), torch.optim.Adam,
                          {"betas": (0.5, 0.99), "weight_decay": 1e-2}),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_unroll_is_torch_optim(tiny_cnn, tiny_synthetic, name):
    optimizer, reference, settings = OPTIMIZERS[name]
    params = {k: v.detach().clone() for k, v in tiny_cnn.named_parameters()}
    theta = unroll(population_forward(tiny_cnn, "auto"), {k: v.unsqueeze(0) for k, v in params.items()}, tiny_synthetic,
                   optimizer=optimizer)
    weights = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    torch_optimizer = reference(weights.values(), lr=0.1, **settings)
    for t, lr in enumerate(tiny_synthetic.lrs()):
        x, y = tiny_synthetic.batch(t)
        torch_optimizer.param_groups[0]["lr"] = float(lr)
        torch_optimizer.zero_grad()
        torch.nn.functional.cross_entropy(functional_call(tiny_cnn, weights, (x,)), y).backward()
        torch_optimizer.step()
    for k in params:
        torch.testing.assert_close(theta[k][0], weights[k], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("keep_graphs", [False, True])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_hvp_matches_autograd_for_every_optimizer(make_cnn, tiny_synthetic, real_batch, name, keep_graphs):
    """Two models at once, learned labels on: every gradient agrees to 1e-10 in float64."""
    from ddsec.engine import stack_params

    optimizer = OPTIMIZERS[name][0]
    params = stack_params([dict(make_cnn(seed=s).named_parameters()) for s in range(2)])
    synthetic = tiny_synthetic.with_learnable_labels(3, confidence=0.8)
    hvp = meta_grads(make_cnn(), params, synthetic, *real_batch, optimizer=optimizer, keep_graphs=keep_graphs)
    ref = meta_grads(make_cnn(), params, synthetic, *real_batch, optimizer=optimizer, mode="autograd")
    assert hvp.images.abs().max() > 0 and hvp.learned["lr"].abs().min() > 0
    torch.testing.assert_close(hvp.fields(), ref.fields(), atol=1e-10, rtol=1e-8)


def test_learned_momentum_with_weight_decay_matches_autograd(tiny_cnn, tiny_synthetic, real_batch):
    synthetic = tiny_synthetic.with_learned("momentum", 0.7)
    params = dict(tiny_cnn.named_parameters())
    hvp = meta_grads(tiny_cnn, params, synthetic, *real_batch, optimizer=SGD(weight_decay=1e-1))
    ref = meta_grads(tiny_cnn, params, synthetic, *real_batch, optimizer=SGD(weight_decay=1e-1), mode="autograd")
    plain = meta_grads(tiny_cnn, params, synthetic, *real_batch)
    assert not torch.allclose(hvp.images, plain.images)  # the weight decay is in the unroll
    torch.testing.assert_close(hvp.fields(), ref.fields(), atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("bad, message", [
    (lambda: SGD(momentum=1.0), "momentum must be"),
    (lambda: SGD(weight_decay=-1e-3), "weight_decay must be"),
    (lambda: Adam(betas=(0.9, 1.0)), "beta2 must be"),
    (lambda: Adam(eps=0), "eps must be positive"),
])
def test_bad_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()
