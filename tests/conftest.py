"""Shared fixtures: tiny smooth models, tiny synthetic sets, and the real-data root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from ddsec.engine import SyntheticSet
from ddsec.models_zoo import create_model

# Tests use tiny models: one thread avoids oversubscription overhead on small CPUs.
torch.set_num_threads(1)


def make_tiny_cnn(num_classes: int = 3, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """The registry's smooth (tanh) ``test_cnn`` for 1×6×6 inputs, small enough for float64 finite differences."""
    model = create_model("test_cnn", num_classes=num_classes, in_chans=1, image_size=6, init="xavier", seed=seed)
    return model.to(dtype).eval()


@pytest.fixture
def make_cnn():
    """The factory :func:`make_tiny_cnn`, for tests that need several differently seeded models."""
    return make_tiny_cnn


@pytest.fixture
def tiny_cnn() -> nn.Module:
    return make_tiny_cnn()


@pytest.fixture
def tiny_synthetic() -> SyntheticSet:
    """S=3 steps × E=2 epochs, 3 classes × 2 images per class, 1×6×6, float64, varied step sizes."""
    gen = torch.Generator().manual_seed(1)
    synthetic = SyntheticSet.create(
        num_classes=3, ipc=2, steps=3, epochs=2, image_shape=(1, 6, 6), init_lr=0.1,
        generator=gen, dtype=torch.float64,
    )
    synthetic.raw_lrs = torch.randn(6, generator=gen, dtype=torch.float64)
    return synthetic


@pytest.fixture
def real_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return torch.randn(10, 1, 6, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (10,), generator=gen)


@pytest.fixture
def data_root() -> Path:
    """``$DDSEC_DATA``; skips the test when it is unset."""
    root = os.environ.get("DDSEC_DATA")
    if not root:
        pytest.skip("DDSEC_DATA is not set: real-data test skipped")
    return Path(root)
