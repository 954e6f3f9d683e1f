"""Real MNIST and USPS from DDSEC_DATA (e.g. DDSEC_DATA=../shared/data); skipped when absent."""

import os
from pathlib import Path

import pytest
import torch

from ddsec.data import load_dataset

pytestmark = pytest.mark.realdata


def _root_with(*relative: str) -> Path:
    env = os.environ.get("DDSEC_DATA")
    if not env:
        pytest.skip("DDSEC_DATA is not set")
    root = Path(env)
    missing = [r for r in relative if not (root / r).is_file()]
    if missing:
        pytest.skip(f"not in DDSEC_DATA: {', '.join(missing)}")
    return root


MNIST_FILES = [
    f"MNIST/raw/{p}-{k}"
    for p in ("train", "t10k")
    for k in ("images-idx3-ubyte", "labels-idx1-ubyte")
]


@pytest.mark.parametrize("train, count", [(True, 60000), (False, 10000)])
def test_real_mnist(train, count):
    _root_with(*MNIST_FILES)
    ds = load_dataset("mnist", train=train)
    assert ds.images.shape == (count, 1, 28, 28)
    assert set(ds.labels.unique().tolist()) == set(range(10))
    if train:  # the published constants are this split's statistics
        assert abs(float(ds.images.mean())) < 1e-3 and abs(float(ds.images.std()) - 1) < 1e-3


@pytest.mark.parametrize("train, count", [(True, 7291), (False, 2007)])
def test_real_usps(train, count):
    _root_with("usps/usps.bz2" if train else "usps/usps.t.bz2")
    ds = load_dataset("usps", train=train)
    assert ds.images.shape == (count, 1, 16, 16)
    assert set(ds.labels.unique().tolist()) == set(range(10))
    if train:
        assert abs(float(ds.images.mean())) < 1e-3 and abs(float(ds.images.std()) - 1) < 1e-3
        assert torch.bincount(ds.labels).tolist() == [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]
    else:
        up = load_dataset("usps", train=False, image_size=28, channels=3)
        assert up.images.shape == (count, 3, 28, 28)
