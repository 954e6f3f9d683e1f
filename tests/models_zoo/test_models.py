"""Every zoo model: shapes, errors, reference parameter counts, torch.func and double backward."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from ddsec.errors import DDSecError
from ddsec.models_zoo import create_model, list_models

SMALL = [
    ("lenet", 1, 28),
    ("lenet", 3, 32),
    ("alexcifarnet", 3, 32),
    ("alexcifarnet", 1, 32),
    ("convnet3", 1, 28),
    ("convnet3", 3, 32),
    ("convnet3", 3, 16),
    ("mlp", 1, 28),
    ("mlp", 3, 5),
    ("test_mlp", 1, 8),
    ("test_cnn", 3, 7),
]
FUNCTIONAL = [
    ("lenet", 1, 28),
    ("convnet3", 1, 28),
    ("alexcifarnet", 3, 32),
    ("mlp", 1, 28),
    ("test_mlp", 1, 8),
    ("test_cnn", 1, 8),
]


def test_every_registered_model_is_covered():
    assert set(list_models()) == {name for name, _, _ in SMALL} | {"alexnet"}


@pytest.mark.parametrize(("name", "in_chans", "image_size"), SMALL)
def test_logits_shape(name, in_chans, image_size):
    model = create_model(name, num_classes=7, in_chans=in_chans, image_size=image_size, seed=0)
    out = model(torch.randn(2, in_chans, image_size, image_size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_alexnet_small_images_and_layout():
    model = create_model("alexnet", num_classes=4, in_chans=3, image_size=64, seed=0).eval()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 4) and torch.equal(out, model(x))
    assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    assert list(model.buffers()) == []
    ten_class_count = 57_044_810
    assert sum(p.numel() for p in model.parameters()) == ten_class_count - 6 * (4096 + 1)


@pytest.mark.parametrize(
    ("name", "in_chans", "image_size", "hint"),
    [
        ("lenet", 1, 8, "28 or 32"),
        ("alexcifarnet", 3, 28, "32"),
        ("convnet3", 3, 30, "multiple of 8"),
        ("alexnet", 1, 224, "3-channel"),
        ("alexnet", 3, 32, "63"),
    ],
)
def test_unsupported_shapes(name, in_chans, image_size, hint):
    with pytest.raises(DDSecError) as info:
        create_model(name, in_chans=in_chans, image_size=image_size)
    message = str(info.value)
    assert message.startswith(name) and hint in message and "\n" not in message


@pytest.mark.parametrize(
    ("name", "in_chans", "image_size", "count"),
    [
        ("lenet", 1, 28, 61_706),
        ("alexcifarnet", 3, 32, 1_756_426),
        ("convnet3", 3, 32, 320_010),
        ("convnet3", 1, 28, 317_706),
        ("mlp", 1, 28, 269_322),
    ],
)
def test_reference_parameter_counts(name, in_chans, image_size, count):
    model = create_model(name, num_classes=10, in_chans=in_chans, image_size=image_size)
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize("name", sorted(set(list_models()) - {"alexnet"}))
def test_functional_friendly(name):
    size = 32 if name == "alexcifarnet" else 28
    model = create_model(name, in_chans=3, image_size=size)
    assert list(model.buffers()) == []
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize(("name", "in_chans", "image_size"), FUNCTIONAL)
def test_vmap_over_stacked_models_matches_loop(name, in_chans, image_size):
    models = [
        create_model(name, in_chans=in_chans, image_size=image_size, init="xavier", seed=seed)
        for seed in range(3)
    ]
    params, buffers = stack_module_state(models)
    x = torch.randn(2, in_chans, image_size, image_size)

    def forward(p, b, inputs):
        return functional_call(models[0], (p, b), (inputs,))

    batched = vmap(forward, in_dims=(0, 0, None))(params, buffers, x)
    looped = torch.stack([m(x) for m in models])
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "in_chans", "image_size"), FUNCTIONAL)
def test_double_backward(name, in_chans, image_size):
    model = create_model(name, num_classes=3, in_chans=in_chans, image_size=image_size, seed=0)
    params = dict(model.named_parameters())
    x = torch.randn(3, in_chans, image_size, image_size, requires_grad=True)
    loss = F.cross_entropy(functional_call(model, params, (x,)), torch.tensor([0, 1, 2]))
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    vector = [torch.randn_like(g) for g in grads]
    g_dot_v = sum((g * v).sum() for g, v in zip(grads, vector))
    mixed = torch.autograd.grad(g_dot_v, [x, *params.values()])
    assert all(torch.isfinite(m).all() for m in mixed)
    assert mixed[0].abs().sum() > 0


@pytest.mark.parametrize("name", ["test_mlp", "test_cnn"])
def test_test_models_second_derivatives_match_finite_differences(name):
    model = create_model(name, num_classes=3, in_chans=2, image_size=4, seed=0).double()
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach() for p in model.parameters()]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, generator=gen)
    v = [torch.randn(t.shape, dtype=torch.float64, generator=gen) for t in theta]
    u = torch.randn(x.shape, dtype=torch.float64, generator=gen)
    targets = torch.tensor([0, 2])

    def grad(params, inputs, create_graph=False):
        logits = functional_call(model, dict(zip(names, params)), (inputs,))
        loss = F.cross_entropy(logits, targets)
        return torch.autograd.grad(loss, params, create_graph=create_graph)

    params = [t.clone().requires_grad_() for t in theta]
    inputs = x.clone().requires_grad_()
    g_dot_v = sum((g * w).sum() for g, w in zip(grad(params, inputs, create_graph=True), v))
    hvp_x, *hvp = torch.autograd.grad(g_dot_v, [inputs, *params])

    eps = 1e-5

    def grad_at(shift_theta, shift_x):
        shifted = [(t + shift_theta * w).requires_grad_() for t, w in zip(theta, v)]
        return grad(shifted, x + shift_x * u)

    fd_theta = [(a - b) / (2 * eps) for a, b in zip(grad_at(eps, 0.0), grad_at(-eps, 0.0))]
    for exact, approx in zip(hvp, fd_theta):
        torch.testing.assert_close(exact, approx, rtol=1e-6, atol=1e-8)
    plus, minus = grad_at(0.0, eps), grad_at(0.0, -eps)
    fd_x = sum(((a - b) / (2 * eps) * w).sum() for a, b, w in zip(plus, minus, v))
    torch.testing.assert_close((hvp_x * u).sum(), fd_x, rtol=1e-6, atol=1e-8)
