"""The learned-settings registry: a new learnable inner hyper-parameter is one registry entry and an
inner optimizer that reads it; the meta-gradients, the outer loop and its checkpoints take it
with no other change."""

from dataclasses import dataclass, replace

import pytest
import torch

from ddsec.engine import SGD, ClassificationObjective, FixedInit, RealBatches, distill, meta_grads
from ddsec.engine.learned import LEARNABLES, STEP_SIZE, adam_rates
from ddsec.engine.synthetic import inverse_softplus
from ddsec.errors import DDSecError

WEIGHT_DECAY = replace(STEP_SIZE, name="weight_decay", key="raw_weight_decays", rate_from="lr")
"""A positive L2 coefficient per inner step, parametrised like the step sizes (softplus)."""


@dataclass(frozen=True)
class DecayedSGD:
    """SGD whose L2 coefficient is the step's learned ``hypers["weight_decay"]``."""

    def update(self, theta, state, grads, hypers, t):
        decayed = tuple(g + hypers["weight_decay"] * p for g, p in zip(grads, theta))
        return SGD().update(theta, state, decayed, hypers, t)


@pytest.fixture
def decaying(monkeypatch, tiny_synthetic):
    """The tiny set learning a weight decay per step (registered for this test only), varied."""
    monkeypatch.setitem(LEARNABLES, "weight_decay", WEIGHT_DECAY)
    synthetic = tiny_synthetic.with_learned("weight_decay", 0.05)
    gen = torch.Generator().manual_seed(5)
    synthetic.learned["weight_decay"] = synthetic.learned["weight_decay"] + torch.randn(6, generator=gen,
                                                                                          dtype=torch.float64)
    return synthetic


@pytest.mark.parametrize("keep_graphs", [False, True])
def test_a_registered_setting_gets_back_gradients_equal_to_autograd(tiny_cnn, decaying, real_batch, keep_graphs):
    params = dict(tiny_cnn.named_parameters())
    hvp = meta_grads(tiny_cnn, params, decaying, *real_batch, optimizer=DecayedSGD(), keep_graphs=keep_graphs)
    ref = meta_grads(tiny_cnn, params, decaying, *real_batch, optimizer=DecayedSGD(), mode="autograd")
    assert hvp.learned.keys() == {"lr", "weight_decay"} and hvp.learned["weight_decay"].abs().min() > 0
    torch.testing.assert_close(hvp.fields(), ref.fields(), atol=1e-12, rtol=1e-10)


def test_a_registered_settings_gradient_matches_finite_differences(tiny_cnn, decaying, real_batch):
    params = dict(tiny_cnn.named_parameters())
    grad = meta_grads(tiny_cnn, params, decaying, *real_batch, optimizer=DecayedSGD()).learned["weight_decay"]
    eps, index = 1e-6, 2
    shifted = []
    for sign in (1, -1):
        raw = decaying.learned["weight_decay"].clone()
        raw[index] += sign * eps
        moved = decaying.replaced(learned={**decaying.learned, "weight_decay": raw})
        shifted.append(meta_grads(tiny_cnn, params, moved, *real_batch, optimizer=DecayedSGD()).loss)
    assert float((shifted[0] - shifted[1]) / (2 * eps)) == pytest.approx(float(grad[index]), rel=1e-5, abs=1e-9)


def test_the_outer_loop_learns_checkpoints_and_resumes_a_registered_setting(tiny_cnn, decaying, real_batch, tmp_path):
    x, y = real_batch
    objective = ClassificationObjective(tiny_cnn, FixedInit(dict(tiny_cnn.named_parameters())), RealBatches(x, y, 8))
    kwargs = dict(iterations=4, lr=0.01, rates={"weight_decay": 0.1}, inner_optimizer=DecayedSGD(), seed=0)
    full = distill(objective, decaying, **kwargs)
    assert not torch.equal(full.synthetic.learned["weight_decay"], decaying.learned["weight_decay"])
    ckpt = tmp_path / "c.safetensors"
    distill(objective, decaying, **(kwargs | {"iterations": 2}), checkpoint_path=ckpt)
    resumed = distill(objective, decaying, **kwargs, checkpoint_path=ckpt, resume=True)
    assert resumed.resumed_from == 2
    torch.testing.assert_close(resumed.synthetic.learned, full.synthetic.learned, atol=0, rtol=0)
    with pytest.raises(DDSecError, match="another shape"):  # a set without the setting cannot take the checkpoint
        without = decaying.replaced(learned={"lr": decaying.learned["lr"]})
        distill(objective, without, **(kwargs | {"inner_optimizer": SGD()}), checkpoint_path=ckpt, resume=True)


def test_rates_default_along_rate_from():
    assert adam_rates(0.1, {}, ["lr", "momentum", "labels"]) == {"images": 0.1, "lr": 0.1, "momentum": 0.1,
                                                                  "labels": 0.1}
    assert adam_rates(0.1, {"lr": 0.01}, ["lr", "momentum", "labels"]) == {"images": 0.1, "lr": 0.01,
                                                                           "momentum": 0.01, "labels": 0.1}
    assert adam_rates(0.1, {"lr": 0.01, "momentum": 0.5}, ["lr", "momentum"])["momentum"] == 0.5


def test_with_learned_refuses_what_is_not_a_per_step_setting(tiny_synthetic):
    with pytest.raises(ValueError, match="unknown learned setting 'beta'"):
        tiny_synthetic.with_learned("beta", 0.5)
    with pytest.raises(ValueError, match="not learned per inner step"):
        tiny_synthetic.with_learned("labels", 0.5)
    assert torch.allclose(tiny_synthetic.with_learned("momentum", 0.3).momenta(),
                          torch.full((6,), 0.3, dtype=torch.float64))
    assert inverse_softplus(0.3) == pytest.approx(float(LEARNABLES["lr"].raw(torch.tensor(0.3, dtype=torch.float64))))
