"""Learnable soft labels: their back-gradient matches autograd, and the outer loop trains and resumes them."""

from __future__ import annotations

import pytest
import torch

from ddsec.engine import ClassificationObjective, FixedInit, RealBatches, distill, meta_grad, meta_grads


@pytest.fixture
def learned(tiny_synthetic):
    synthetic = tiny_synthetic.with_learnable_labels(3, confidence=0.8)
    gen = torch.Generator().manual_seed(3)
    logits = synthetic.learned["labels"]
    synthetic.learned["labels"] = logits + 0.3 * torch.randn(logits.shape, generator=gen, dtype=torch.float64)
    return synthetic


def test_initial_logits_give_the_asked_confidence(tiny_synthetic):
    synthetic = tiny_synthetic.with_learnable_labels(3, confidence=0.8)
    probs = synthetic.targets(0)
    assert torch.allclose(probs.max(-1).values, torch.full((6,), 0.8, dtype=torch.float64))
    assert torch.equal(probs.argmax(-1), tiny_synthetic.labels[0])
    with pytest.raises(ValueError, match="confidence"):
        tiny_synthetic.with_learnable_labels(3, confidence=0.2)


@pytest.mark.parametrize("keep_graphs", [False, True])
def test_label_gradient_matches_autograd(tiny_cnn, learned, real_batch, keep_graphs):
    params = dict(tiny_cnn.named_parameters())
    hvp = meta_grads(tiny_cnn, params, learned, *real_batch, keep_graphs=keep_graphs)
    ref = meta_grads(tiny_cnn, params, learned, *real_batch, mode="autograd")
    assert hvp.learned["labels"].shape == learned.learned["labels"].shape and hvp.learned["labels"].abs().sum() > 0
    assert hvp.learned.keys() == ref.learned.keys() == {"lr", "labels"}
    torch.testing.assert_close(hvp.fields(), ref.fields(), atol=1e-12, rtol=1e-9)
    assert len(meta_grad(tiny_cnn, params, learned, *real_batch)) == 3


def test_label_gradient_matches_finite_differences(tiny_cnn, learned, real_batch):
    params = dict(tiny_cnn.named_parameters())
    grad = meta_grads(tiny_cnn, params, learned, *real_batch).learned["labels"]
    eps, index = 1e-6, (1, 2, 0)
    shifted = []
    for sign in (1, -1):
        logits = learned.learned["labels"].clone()
        logits[index] += sign * eps
        learned_shift = learned.replaced(learned={**learned.learned, "labels": logits})
        shifted.append(meta_grads(tiny_cnn, params, learned_shift, *real_batch).loss)
    assert float((shifted[0] - shifted[1]) / (2 * eps)) == pytest.approx(float(grad[index]), rel=1e-5, abs=1e-9)


def test_outer_loop_learns_labels_and_resumes_exactly(tiny_cnn, learned, real_batch, tmp_path):
    x, y = real_batch
    objective = ClassificationObjective(tiny_cnn, FixedInit(dict(tiny_cnn.named_parameters())), RealBatches(x, y, 8))
    kwargs = dict(iterations=4, lr=0.01, rates={"labels": 0.1}, seed=0)
    full = distill(objective, learned, **kwargs)
    assert not torch.equal(full.synthetic.learned["labels"], learned.learned["labels"])
    ckpt = tmp_path / "c.safetensors"
    distill(objective, learned, **(kwargs | {"iterations": 2}), checkpoint_path=ckpt)
    resumed = distill(objective, learned, **kwargs, checkpoint_path=ckpt, resume=True)
    assert torch.equal(resumed.synthetic.learned["labels"], full.synthetic.learned["labels"])
    assert torch.equal(resumed.synthetic.images, full.synthetic.images)
