"""Registry, initialisation and weight files of ``ddsec.models_zoo``."""

import math

import pytest
import torch
from safetensors import safe_open

import ddsec.models_zoo as zoo
from ddsec.errors import DDSecError
from ddsec.models_zoo import create_model, list_models, load_weights, register_model, save_weights
from ddsec.models_zoo import registry

ZOO = ["alexcifarnet", "alexnet", "convnet3", "lenet", "mlp", "test_cnn", "test_mlp"]
PICKLE_CALLS = []


def _record_call():
    PICKLE_CALLS.append(1)
    return {}


class _PickledPayload:
    """Unpickling this would call ``_record_call``; a weights-only reader must refuse it."""

    def __reduce__(self):
        return (_record_call, ())


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_exports():
    assert sorted(zoo.__all__) == sorted(
        ["create_model", "list_models", "load_population", "load_weights", "population_metadata",
         "register_model", "save_population", "save_weights"]
    )


def test_list_models_sorted_and_filtered():
    assert list_models() == ZOO
    assert list_models("test_*") == ["test_cnn", "test_mlp"]
    assert list_models("nothing*") == []


def test_register_new_and_duplicate(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    @register_model
    def tiny_linear(*, num_classes, in_chans, image_size):
        linear = torch.nn.Linear(in_chans * image_size**2, num_classes)
        return torch.nn.Sequential(torch.nn.Flatten(), linear)

    assert "tiny_linear" in list_models()
    model = create_model("tiny_linear", num_classes=3, image_size=4)
    assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="tiny_linear"):
        register_model(tiny_linear)


def test_duplicate_of_builtin_name_raises():
    def lenet(*, num_classes, in_chans, image_size):
        return torch.nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register_model(lenet)
    assert isinstance(create_model("lenet"), zoo.lenet.LeNet)


def test_unknown_name_lists_available():
    with pytest.raises(DDSecError) as info:
        create_model("resnet9000")
    message = str(info.value)
    assert "\n" not in message and "resnet9000" in message
    assert all(name in message for name in ZOO)


@pytest.mark.parametrize("kwargs", [{"init": "orthogonal"}, {"num_classes": 0}, {"image_size": -1}])
def test_bad_arguments(kwargs):
    with pytest.raises(DDSecError):
        create_model("test_mlp", **kwargs)


@pytest.mark.parametrize("init", ["default", "xavier", "kaiming"])
def test_init_reproducible_with_seed(init):
    a = _params(create_model("test_cnn", init=init, seed=3))
    b = _params(create_model("test_cnn", init=init, seed=3))
    c = _params(create_model("test_cnn", init=init, seed=4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0.weight"], c["0.weight"])


def test_xavier_and_kaiming_std_match_theory():
    fan_in, fan_out = 28 * 28, 256
    xavier = create_model("mlp", init="xavier", seed=0)[1].weight
    kaiming = create_model("mlp", init="kaiming", seed=0)[1].weight
    assert xavier.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.02)
    assert kaiming.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.02)
    assert abs(xavier.mean().item()) < 1e-3
    assert torch.count_nonzero(create_model("mlp", init="xavier", seed=0)[1].bias) == 0


def test_safetensors_round_trip_with_metadata(tmp_path):
    model = create_model("test_cnn", num_classes=5, seed=0)
    path = save_weights(model, tmp_path / "w.safetensors", {"model": "test_cnn", "seed": "0"})
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"model": "test_cnn", "seed": "0"}
    loaded = create_model("test_cnn", num_classes=5, seed=1, checkpoint=path)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_save_state_dict_and_load_weights(tmp_path):
    state = _params(create_model("test_mlp", seed=0))
    save_weights(state, tmp_path / "s.safetensors")
    target = load_weights(create_model("test_mlp", seed=9), tmp_path / "s.safetensors")
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("wrap", [False, True])
def test_pth_state_dict_round_trip(tmp_path, wrap):
    model = create_model("test_cnn", seed=0)
    state = {"state_dict": model.state_dict()} if wrap else model.state_dict()
    torch.save(state, tmp_path / "w.pth")
    loaded = create_model("test_cnn", seed=1, checkpoint=tmp_path / "w.pth")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_save_weights_rejects_bad_suffix_and_metadata(tmp_path):
    model = create_model("test_mlp")
    with pytest.raises(DDSecError):
        save_weights(model, tmp_path / "w.pth")
    with pytest.raises(TypeError):
        save_weights(model, tmp_path / "w.safetensors", {"seed": 0})


@pytest.mark.parametrize("name", ["bad.safetensors", "bad.pth"])
def test_corrupt_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not a weights file" * 8)
    with pytest.raises(DDSecError, match=name) as info:
        create_model("test_mlp", checkpoint=path)
    assert "\n" not in str(info.value)


def test_pickled_objects_are_never_executed(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save(_PickledPayload(), path)
    with pytest.raises(DDSecError, match="evil.pth"):
        create_model("test_mlp", checkpoint=path)
    assert PICKLE_CALLS == []


def test_wrong_shape_and_keys(tmp_path):
    save_weights(create_model("test_mlp", num_classes=3), tmp_path / "k3.safetensors")
    with pytest.raises(DDSecError, match=r"k3\.safetensors.*shape"):
        create_model("test_mlp", num_classes=10, checkpoint=tmp_path / "k3.safetensors")
    with pytest.raises(DDSecError, match="missing keys"):
        create_model("test_cnn", checkpoint=tmp_path / "k3.safetensors")


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DDSecError, match="not found"):
        create_model("test_mlp", checkpoint=tmp_path / "absent.safetensors")
    (tmp_path / "w.bin").write_bytes(b"")
    with pytest.raises(DDSecError, match=r"w\.bin"):
        create_model("test_mlp", checkpoint=tmp_path / "w.bin")


def test_timm_architectures_come_through_the_registry():
    """A timm model is built for the dataset's shape, drawn from a seed, and trains through the engine."""
    from ddsec.engine import SyntheticSet, meta_grad
    from ddsec.models_zoo.zoo import entry_name

    model = create_model("timm/resnet10t", num_classes=3, in_chans=1, image_size=16, seed=0).eval()
    again = create_model("timm/resnet10t", num_classes=3, in_chans=1, image_size=16, seed=0).eval()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 3)
    synthetic = SyntheticSet.create(num_classes=3, ipc=1, steps=1, epochs=1, image_shape=(1, 16, 16), init_lr=0.05,
                                    generator=torch.Generator().manual_seed(0))
    loss, images_grad, _ = meta_grad(model, dict(model.named_parameters()), synthetic, torch.randn(4, 1, 16, 16),
                                     torch.tensor([0, 1, 2, 0]))
    assert torch.isfinite(loss) and images_grad.abs().sum() > 0
    assert entry_name("digits", "timm/resnet10t") == "digits-timm-resnet10t"
    with pytest.raises(DDSecError, match="unknown timm architecture 'resnet_nope'"):
        create_model("timm/resnet_nope")
    with pytest.raises(DDSecError, match="or timm/<architecture>"):
        create_model("nope")
