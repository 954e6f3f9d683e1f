"""The back-gradient (hvp) pass against plain autograd and finite differences, in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddsec.engine import SyntheticSet, meta_grad, resolve_batching, stack_params
from ddsec.engine.population import LOOP_FROM


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("keep_graphs", [False, True])
@pytest.mark.parametrize("stacked", [False, True])
def test_hvp_matches_autograd_float64(tiny_cnn, make_cnn, tiny_synthetic, real_batch, keep_graphs, stacked):
    x, y = real_batch
    params = dict(tiny_cnn.named_parameters())
    if stacked:
        params = stack_params([tiny_cnn, make_cnn(seed=5)])
    loss_h, img_h, lr_h = meta_grad(tiny_cnn, params, tiny_synthetic, x, y, mode="hvp", keep_graphs=keep_graphs)
    loss_a, img_a, lr_a = meta_grad(tiny_cnn, params, tiny_synthetic, x, y, mode="autograd")
    assert img_h.shape == tiny_synthetic.images.shape and lr_h.shape == (6,)
    assert abs(float(loss_h - loss_a)) < 1e-12
    assert rel_err(img_h, img_a) < 1e-10
    assert rel_err(lr_h, lr_a) < 1e-10
    assert img_a.abs().max() > 0 and lr_a.abs().max() > 0


def _loss(model, params, synthetic, x, y) -> float:
    return float(meta_grad(model, params, synthetic, x, y, mode="autograd")[0])


@pytest.mark.parametrize("mode", ["hvp", "autograd"])
def test_gradients_match_finite_differences(tiny_cnn, tiny_synthetic, real_batch, mode):
    x, y = real_batch
    params = dict(tiny_cnn.named_parameters())
    _, img_grad, lr_grad = meta_grad(tiny_cnn, params, tiny_synthetic, x, y, mode=mode)
    eps = 1e-6
    for t in (0, 4):
        plus, minus = tiny_synthetic.learned["lr"].clone(), tiny_synthetic.learned["lr"].clone()
        plus[t] += eps
        minus[t] -= eps
        fd = (_loss(tiny_cnn, params, SyntheticSet(tiny_synthetic.images, tiny_synthetic.labels, {"lr": plus}, 2), x, y)
              - _loss(tiny_cnn, params, SyntheticSet(tiny_synthetic.images, tiny_synthetic.labels, {"lr": minus}, 2), x, y)) / (2 * eps)
        assert fd == pytest.approx(float(lr_grad[t]), rel=1e-6, abs=1e-10)
    for index in [(0, 0, 0, 2, 3), (2, 5, 0, 1, 4)]:
        plus, minus = tiny_synthetic.images.clone(), tiny_synthetic.images.clone()
        plus[index] += eps
        minus[index] -= eps
        fd = (_loss(tiny_cnn, params, tiny_synthetic.replaced(images=plus), x, y)
              - _loss(tiny_cnn, params, tiny_synthetic.replaced(images=minus), x, y)) / (2 * eps)
        assert fd == pytest.approx(float(img_grad[index]), rel=1e-5, abs=1e-10)


def test_population_gradient_is_mean_of_single_model_gradients(make_cnn, tiny_synthetic, real_batch):
    x, y = real_batch
    models = [make_cnn(seed=s) for s in range(3)]
    singles = [meta_grad(models[0], dict(m.named_parameters()), tiny_synthetic, x, y) for m in models]
    loss, img, lr = meta_grad(models[0], stack_params(models), tiny_synthetic, x, y)
    assert float(loss) == pytest.approx(sum(float(s[0]) for s in singles) / 3, rel=1e-12)
    assert rel_err(img, sum(s[1] for s in singles) / 3) < 1e-12
    assert rel_err(lr, sum(s[2] for s in singles) / 3) < 1e-12


def test_vmap_equals_loop(make_cnn, tiny_synthetic, real_batch):
    x, y = real_batch
    population = stack_params([make_cnn(seed=s) for s in range(4)])
    model = make_cnn()
    by_vmap = meta_grad(model, population, tiny_synthetic, x, y, batching="vmap")
    by_loop = meta_grad(model, population, tiny_synthetic, x, y, batching="loop")
    for a, b in zip(by_vmap, by_loop):
        assert rel_err(a, b) < 1e-12


def test_auto_loops_the_outer_loss_only_on_a_large_cpu_batch_of_a_convolutional_model(make_cnn, tiny_synthetic):
    model = make_cnn()
    large, small = torch.zeros(LOOP_FROM, 1, 6, 6), torch.zeros(LOOP_FROM - 1, 1, 6, 6)
    assert resolve_batching(model, "auto", large) == "loop"
    assert resolve_batching(model, "auto", small) == "vmap"
    assert resolve_batching(model, "auto") == "vmap"  # the step batches
    assert resolve_batching(model, "vmap", large) == "vmap"  # an explicit choice stands
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    assert resolve_batching(mlp, "auto", large) == "vmap"

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(LOOP_FROM, 1, 6, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (LOOP_FROM,), generator=gen)
    population = stack_params([make_cnn(seed=s) for s in range(3)])
    by_auto = meta_grad(model, population, tiny_synthetic, x, y)
    by_vmap = meta_grad(model, population, tiny_synthetic, x, y, batching="vmap")
    for a, b in zip(by_auto, by_vmap):
        assert rel_err(a, b) < 1e-12


def test_float32_close_to_float64(tiny_cnn, make_cnn, tiny_synthetic, real_batch):
    x, y = real_batch
    ref = meta_grad(tiny_cnn, dict(tiny_cnn.named_parameters()), tiny_synthetic, x, y)
    model32 = make_cnn(dtype=torch.float32)
    syn32 = SyntheticSet(tiny_synthetic.images.float(), tiny_synthetic.labels, {"lr": tiny_synthetic.learned["lr"].float()}, 2)
    out = meta_grad(model32, dict(model32.named_parameters()), syn32, x.float(), y)
    assert out[1].dtype == torch.float32
    assert rel_err(out[1].double(), ref[1]) < 1e-4
    assert rel_err(out[2].double(), ref[2]) < 1e-4


def test_soft_labels_supported(tiny_cnn, tiny_synthetic, real_batch):
    x, y = real_batch
    soft = torch.softmax(torch.randn(3, 6, 3, dtype=torch.float64), -1)
    synthetic = SyntheticSet(tiny_synthetic.images, soft, tiny_synthetic.learned, 2)
    hvp = meta_grad(tiny_cnn, dict(tiny_cnn.named_parameters()), synthetic, x, y)
    ref = meta_grad(tiny_cnn, dict(tiny_cnn.named_parameters()), synthetic, x, y, mode="autograd")
    assert rel_err(hvp[1], ref[1]) < 1e-10


def test_input_errors(tiny_cnn, tiny_synthetic, real_batch):
    x, y = real_batch
    params = dict(tiny_cnn.named_parameters())
    with pytest.raises(ValueError, match="mode"):
        meta_grad(tiny_cnn, params, tiny_synthetic, x, y, mode="backprop")
    with pytest.raises(ValueError, match="dtype|float"):
        meta_grad(tiny_cnn, params, tiny_synthetic, x.float(), y)
    with pytest.raises(ValueError, match="shape"):
        meta_grad(tiny_cnn, {k: v[..., :1] for k, v in params.items()}, tiny_synthetic, x, y)
    dropout_model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(36, 3)).double().train()
    with pytest.raises(ValueError, match="eval"):
        meta_grad(dropout_model, dict(dropout_model.named_parameters()), tiny_synthetic, x, y)


def test_synthetic_set_validation():
    images = torch.zeros(2, 4, 1, 3, 3)
    labels = torch.zeros(2, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="'lr' must be \\[T\\]"):
        SyntheticSet(images, labels, {"lr": torch.zeros(3)}, epochs=2)
    with pytest.raises(ValueError, match="needs 'lr'"):
        SyntheticSet(images, labels, {}, epochs=2)
    with pytest.raises(ValueError, match="unknown learned setting 'beta'"):
        SyntheticSet(images, labels, {"lr": torch.zeros(4), "beta": torch.zeros(4)}, epochs=2)
    with pytest.raises(ValueError, match="'labels' must be"):
        SyntheticSet(images, labels, {"lr": torch.zeros(4), "labels": torch.zeros(2, 3, 2)}, epochs=2)
    with pytest.raises(ValueError, match="labels"):
        SyntheticSet(images, labels[:, :3], {"lr": torch.zeros(4)}, epochs=2)
    with pytest.raises(ValueError, match="int64"):
        SyntheticSet(images, labels.int(), {"lr": torch.zeros(2)}, epochs=1)
    created = SyntheticSet.create(num_classes=2, ipc=2, steps=2, epochs=3, image_shape=(1, 3, 3), init_lr=0.02)
    assert created.labels[0].tolist() == [0, 0, 1, 1]
    assert created.total_steps == 6
    assert torch.allclose(created.lrs(), torch.full((6,), 0.02))
