"""scikit-learn's embedded handwritten digits: a real dataset that needs no files or network.

``sklearn.datasets.load_digits`` ships 1,797 real 8x8 grey digits (UCI "Optical Recognition of
Handwritten Digits", pixel values 0..16) inside the scikit-learn package. ddsec splits them
deterministically (stratified, 1/4 test, ``random_state=0``): 1,347 train / 450 test. They are
up-sampled to 28x28 by default so the MNIST models (LeNet) apply unchanged; this is the dataset
the tests and quick examples distil (Wang et al., "Dataset Distillation", arXiv 1811.10959).
"""

from __future__ import annotations

import numpy as np
import torch

from ddsec.data.dataset import DatasetInfo, ImageDataset
from ddsec.data.transforms import build_dataset, channel_stats, check_size_and_channels, convert_pixels

__all__ = ["DIGITS_INFO", "TEST_FRACTION", "load_digits"]

DIGITS_INFO = DatasetInfo(channels=1, image_size=28, num_classes=10)
TEST_FRACTION = 0.25
_SPLIT_SEED = 0


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed stratified split: ``(train_x, test_x, train_y, test_y)``, x float ``[n, 8, 8]`` in 0..16."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    return train_test_split(
        bunch.images, bunch.target, test_size=TEST_FRACTION, stratify=bunch.target, random_state=_SPLIT_SEED
    )


def load_digits(
    *,
    train: bool = True,
    root: object = None,
    download: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Load the embedded digits (no files, no network).

    Normalisation statistics are computed at load time from the train split's pixels after
    conversion to the requested size and channels (deterministic: the split is fixed), and
    the same values are used for the test split.

    Args:
        train: Train split (1,347 images) or test split (450 images).
        root: Ignored (the data ships with scikit-learn).
        download: Ignored.
        image_size: Side length, default 28 (native 8).
        channels: 1 (default) or 3.

    Returns:
        images float32 ``[N, channels, image_size, image_size]``, labels int64 ``[N]`` in 0..9.
    """
    del root, download
    check_size_and_channels(image_size, channels)
    size = DIGITS_INFO.image_size if image_size is None else image_size
    train_x, test_x, train_y, test_y = _split()

    def pixels(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / 16.0).unsqueeze(1)

    mean, std = channel_stats(convert_pixels(pixels(train_x), image_size=size, channels=channels))
    x, y = (train_x, train_y) if train else (test_x, test_y)
    return build_dataset(
        "digits",
        pixels(x),
        torch.from_numpy(np.asarray(y, dtype=np.int64)),
        class_names=tuple(str(i) for i in range(10)),
        mean=mean,
        std=std,
        image_size=size,
        channels=channels,
    )
