"""Population files: round trip, metadata checks and clear errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from ddsec.engine import stack_params
from ddsec.errors import DDSecError, FormatError
from ddsec.models_zoo import create_model, load_population, population_metadata, save_population


def models(n: int):
    return [create_model("test_mlp", num_classes=3, in_chans=1, image_size=4, seed=s) for s in range(n)]


def write(path, n=3):
    return save_population(path, stack_params(models(n)), model="test_mlp", dataset="digits", num_classes=3,
                           in_chans=1, image_size=4, seeds=list(range(n)), test_acc=[0.5] * n)


def test_round_trip(tmp_path):
    path = write(tmp_path / "pop.safetensors")
    params = load_population(path, model="test_mlp", dataset="digits")
    expected = stack_params(models(3))
    assert params.keys() == expected.keys()
    assert all(torch.equal(params[k], expected[k]) for k in params)
    meta = population_metadata(path)
    assert meta["count"] == 3 and meta["seeds"] == [0, 1, 2] and meta["image_size"] == 4


def test_wrong_model_or_dataset(tmp_path):
    path = write(tmp_path / "pop.safetensors")
    with pytest.raises(DDSecError, match="test_mlp models trained on digits"):
        load_population(path, model="lenet")
    with pytest.raises(DDSecError, match="dataset 'mnist'"):
        load_population(path, dataset="mnist")


def test_missing_corrupt_and_foreign(tmp_path):
    with pytest.raises(DDSecError, match="does not exist"):
        load_population(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(FormatError, match="bad.safetensors"):
        load_population(bad)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(FormatError, match="not a ddsec population"):
        load_population(foreign)


def test_counts_must_match(tmp_path):
    with pytest.raises(ValueError, match="3 seeds"):
        save_population(tmp_path / "p.safetensors", stack_params(models(3)), model="test_mlp", dataset="digits",
                        num_classes=3, in_chans=1, image_size=4, seeds=[1, 2], test_acc=[0.5] * 3)
