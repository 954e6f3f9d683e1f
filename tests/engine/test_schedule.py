"""Inner-step plans: clean images mixed in, shifts, clean steps, scaled and fixed step sizes; the
back-gradient pass agrees with autograd in float64 under all of them, and the default plan is
the set replayed as distilled."""

from __future__ import annotations

import pytest
import torch

from ddsec.engine import SGD, Adam, InnerStep, meta_grads, population_forward, replay, unroll


@pytest.mark.parametrize("optimizer", [SGD(momentum=0.9, weight_decay=5e-2), Adam(weight_decay=1e-2)],
                         ids=["sgd-momentum-weight-decay", "adam"])
@pytest.mark.parametrize("labels", [False, True])
def test_hvp_matches_autograd_under_a_victim_plan(tiny_cnn, tiny_synthetic, real_batch, optimizer, labels, victim_plan):
    synthetic = tiny_synthetic.with_learnable_labels(3, confidence=0.8) if labels else tiny_synthetic
    plan = victim_plan
    params = dict(tiny_cnn.named_parameters())
    hvp = meta_grads(tiny_cnn, params, synthetic, *real_batch, optimizer=optimizer, plan=plan)
    ref = meta_grads(tiny_cnn, params, synthetic, *real_batch, optimizer=optimizer, plan=plan, mode="autograd")
    assert hvp.images[:3].abs().amax((1, 2, 3, 4)).min() > 0  # the three poisoned slots get gradients
    assert hvp.learned["lr"][:2].abs().min() > 0 and (hvp.learned["lr"][2:] == 0).all()  # only the learned step sizes used
    torch.testing.assert_close(hvp.fields(), ref.fields(), atol=1e-10, rtol=1e-8)


def test_default_plan_is_the_replay_and_mixing_changes_the_unroll(tiny_cnn, tiny_synthetic, victim_plan):
    forward = population_forward(tiny_cnn, "auto")
    params = {k: v.detach().unsqueeze(0) for k, v in tiny_cnn.named_parameters()}
    default = unroll(forward, params, tiny_synthetic)
    replayed = unroll(forward, params, tiny_synthetic, plan=replay(tiny_synthetic.steps, tiny_synthetic.total_steps))
    assert all(torch.equal(default[k], replayed[k]) for k in default)
    mixed = unroll(forward, params, tiny_synthetic, plan=victim_plan)
    assert not all(torch.allclose(default[k], mixed[k]) for k in default)


@pytest.mark.parametrize("kwargs, message", [
    ({"slot": 0}, "either a learned step size"),
    ({"slot": 0, "lr_index": 0, "lr": 0.1}, "either a learned step size"),
    ({"slot": None, "lr": 0.1}, "needs synthetic images"),
    ({"slot": 0, "lr": 0.1, "clean_images": torch.zeros(1, 1, 6, 6)}, "go together"),
])
def test_bad_steps_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InnerStep(**kwargs)
