"""MNIST, USPS, SVHN and CIFAR-10 from a local data root, in torchvision's file layouts.

These are the datasets of Wang et al., "Dataset Distillation" (arXiv 1811.10959): MNIST and
CIFAR-10 for distillation and poisoning, USPS/MNIST/SVHN for digit domain adaptation.

Files are read from :func:`ddsec.data.root.data_root` (``--data-dir`` > ``DDSEC_DATA`` > cache):

=========  =================================================================  ==================
dataset    files                                                              native
=========  =================================================================  ==================
mnist      ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``  1x28x28, 60k/10k
usps       ``<root>/usps/usps.bz2``, ``<root>/usps/usps.t.bz2`` (LIBSVM)      1x16x16, 7291/2007
svhn       ``<root>/svhn/{train,test}_32x32.mat``                             3x32x32, 73257/26032
cifar10    ``<root>/cifar-10-batches-py/`` (python version)                   3x32x32, 50k/10k
=========  =================================================================  ==================

``usps-pooled`` reads the same two USPS files, pools them and re-splits them 80/20 at random
(7,438 / 1,860), the kind of split the paper's adaptation experiments used
(:func:`load_usps_pooled`).

Nothing is fetched unless ``download=True``, which uses torchvision's own URLs and checksums
(torchvision reports download progress on stdout/stderr itself). MNIST and CIFAR-10 are read
through the torchvision dataset's whole-array attributes (``.data``, ``.targets``), never item
by item; USPS and SVHN files are parsed here (see below).

USPS digits fill their 16-px frame, while MNIST's fill a 20-px box centred in 28 px. Loaded
larger than 16 px, USPS is therefore framed like MNIST (:data:`USPS_BOX`): resized to 20/28 of
the side and centred on background, so a model sees digits of the same size in both domains.

Integrity checks, as torchvision does them with ``download=False``:

* MNIST checks only that the four uncompressed files exist.
* USPS checks nothing (so copies whose md5 differs from torchvision's, such as one rebuilt
  from the ESL "ZIP code" data, load fine). ddsec parses the LIBSVM file itself anyway
  (faster, float pixels instead of truncated uint8, tolerant of omitted zero entries) and
  uses torchvision only to download.
* SVHN refuses any ``.mat`` whose md5 is not the official one; ddsec therefore reads the
  ``.mat`` itself with ``scipy.io.loadmat`` (no pickle; same layout and label mapping as
  torchvision) and uses torchvision only to download. SVHN needs scipy at run time.
* CIFAR-10 checks each batch file's md5 before unpickling it, so only the official, byte-exact
  files are ever unpickled; ddsec keeps that check.
"""

from __future__ import annotations

import bz2
import os
from dataclasses import replace
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ddsec.data.dataset import DatasetInfo, ImageDataset
from ddsec.data.root import data_root
from ddsec.data.transforms import build_dataset, check_size_and_channels, frame
from ddsec.errors import DataNotFoundError, DDSecError, FormatError

__all__ = [
    "CIFAR10_INFO",
    "MNIST_INFO",
    "SVHN_INFO",
    "USPS_INFO",
    "load_cifar10",
    "load_mnist",
    "load_svhn",
    "load_usps",
    "load_usps_pooled",
    "read_svhn_mat",
    "read_usps_libsvm",
    "usps_framed",
]

MNIST_INFO = DatasetInfo(channels=1, image_size=28, num_classes=10)
USPS_INFO = DatasetInfo(channels=1, image_size=16, num_classes=10)
SVHN_INFO = DatasetInfo(channels=3, image_size=32, num_classes=10)
CIFAR10_INFO = DatasetInfo(channels=3, image_size=32, num_classes=10)

# Per-channel pixel statistics of each training split at native size, in [0, 1] units.
MNIST_STATS = ((0.1307,), (0.3081,))
USPS_STATS = ((0.2545,), (0.3846,))  # computed on the 7,291 training images
USPS_FRAMED_STATS = ((0.1297,), (0.2811,))  # the same images framed like MNIST at 28 px (32 px: 0.1314 / 0.2831)
USPS_BOX = 20 / 28
"""Side of the box a USPS digit fills when loaded larger than 16 px, as a fraction of the side: MNIST's."""
USPS_POOLED_TRAIN = 0.8
"""Share of the pooled 9,298 USPS images in ``usps-pooled``'s training split (7,438, as CoGAN's pkl)."""
USPS_POOLED_SEED = 2018
"""Seed of the permutation that splits the pooled USPS images."""
SVHN_STATS = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))

_DIGIT_NAMES = tuple(str(i) for i in range(10))
_FIX = "put the files there, point --data-dir or DDSEC_DATA at the data root, or pass --download"


def _not_found(name: str, folder: Path, files: str) -> DataNotFoundError:
    return DataNotFoundError(f"{name} not found: expected {files} in {folder}; {_FIX}")


def _download_failed(name: str, folder: Path, exc: BaseException) -> DDSecError:
    detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    if len(detail) > 200:
        detail = detail[:197] + "..."
    return DDSecError(f"could not download {name} into {folder} ({detail}); check the network or place the files there")


def _download(url: str, folder: Path, filename: str, md5: str, name: str) -> None:
    """Fetch one file with torchvision (which checks its md5)."""
    from torchvision.datasets.utils import download_url

    try:
        download_url(url, str(folder), filename, md5)
    except (RuntimeError, OSError) as exc:
        raise _download_failed(name, folder, exc) from exc


def _split_name(train: bool) -> str:
    return "train" if train else "test"


def _load_split_file(
    name: str,
    split_list: dict[str, list[str]],
    reader: Callable[[Path], tuple[torch.Tensor, torch.Tensor]],
    stats: tuple[tuple[float, ...], tuple[float, ...]],
    *,
    train: bool,
    root: str | os.PathLike[str] | None,
    download: bool,
    image_size: int | None,
    channels: int | None,
) -> ImageDataset:
    """A digit dataset kept as one file per split in ``<root>/<name>/`` (USPS, SVHN).

    Args:
        split_list: torchvision's ``{split: [url, filename, md5]}`` for the dataset.
        reader: parses the file into pixels float ``[N, C, H, W]`` in [0, 1] and labels int64 ``[N]``.
        stats: the fixed per-channel ``(mean, std)``.
    """
    check_size_and_channels(image_size, channels)
    folder = data_root(root) / name
    url, filename, md5 = split_list[_split_name(train)]
    path = folder / filename
    if download and not path.is_file():
        _download(url, folder, filename, md5, name.upper())
    if not path.is_file():
        raise _not_found(name.upper(), folder, filename)
    pixels, labels = reader(path)
    return build_dataset(name, pixels, labels, class_names=_DIGIT_NAMES, mean=stats[0], std=stats[1],
                         image_size=image_size, channels=channels)


def load_mnist(
    *,
    train: bool = True,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Load MNIST through ``torchvision.datasets.MNIST`` from ``<root>/MNIST/raw/``.

    Args:
        train: 60,000 training or 10,000 test images.
        root: Data root (the folder holding ``MNIST/``), default :func:`data_root`.
        download: Fetch missing files with torchvision.
        image_size: Side length, default 28.
        channels: 1 (default) or 3.

    Returns:
        images float32 ``[N, channels, S, S]`` normalised with mean 0.1307 / std 0.3081,
        labels int64 ``[N]`` in 0..9.

    Raises:
        DataNotFoundError: The files are missing and ``download`` is false.
    """
    from torchvision.datasets import MNIST

    check_size_and_channels(image_size, channels)
    base = data_root(root)
    try:
        ds = MNIST(root=str(base), train=train, download=download)
    except (RuntimeError, OSError) as exc:
        if download:
            raise _download_failed("MNIST", base / "MNIST" / "raw", exc) from exc
        if not isinstance(exc, FileNotFoundError) and "not found" not in str(exc).lower():
            raise FormatError(f"MNIST files in {base / 'MNIST' / 'raw'} are not readable: {exc}") from exc
        raise _not_found(
            "MNIST",
            base / "MNIST" / "raw",
            "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte "
            "(uncompressed; --download unpacks .gz copies already there without the network)",
        ) from exc
    except (ValueError, AssertionError) as exc:
        raise FormatError(f"MNIST files in {base / 'MNIST' / 'raw'} are not readable: {exc}") from exc
    return build_dataset(
        "mnist",
        ds.data.unsqueeze(1),
        ds.targets,
        class_names=_DIGIT_NAMES,
        mean=MNIST_STATS[0],
        std=MNIST_STATS[1],
        image_size=image_size,
        channels=channels,
    )


def read_usps_libsvm(path: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a USPS file in LIBSVM format (``usps.bz2``, ``usps.t.bz2``; bz2 or plain text).

    Each line is ``label index:value ...`` with ``label`` in 1..10 (digit ``label - 1``),
    ``index`` in 1..256 (row-major 16x16) and ``value`` in ``[-1, 1]``; omitted indices are 0.
    Pixels are mapped to ``(value + 1) / 2`` in float (torchvision instead truncates to uint8).

    Args:
        path: The file.

    Returns:
        ``(pixels, labels)``: float32 ``[N, 1, 16, 16]`` in ``[0, 1]`` and int64 ``[N]`` in 0..9.

    Raises:
        FormatError: The file is not in that format.
    """
    path = Path(path)
    opener = bz2.open if path.suffix == ".bz2" else open
    try:
        with opener(path, "rt", encoding="ascii") as fp:
            lines = [line for line in fp.read().splitlines() if line.strip()]
        values = np.zeros((len(lines), 256), dtype=np.float32)
        labels = np.empty(len(lines), dtype=np.int64)
        for row, line in enumerate(lines):
            fields = np.array(line.replace(":", " ").split(), dtype=np.float64)
            if fields.size % 2 != 1:
                raise ValueError(f"line {row + 1} is not 'label index:value ...'")
            index = fields[1::2].astype(np.int64)
            if index.size and (index.min() < 1 or index.max() > 256):
                raise ValueError(f"line {row + 1} has a pixel index outside 1..256")
            labels[row] = int(fields[0])
            values[row, index - 1] = fields[2::2]
    except (OSError, EOFError, UnicodeDecodeError, ValueError, IndexError) as exc:
        raise FormatError(f"{path} is not a readable USPS (LIBSVM) file: {exc}") from exc
    if not lines:
        raise FormatError(f"{path} is empty; expected USPS in LIBSVM format")
    labels -= 1
    if labels.min() < 0 or labels.max() > 9:
        raise FormatError(f"{path}: USPS labels must lie in 1..10, found {labels.min() + 1}..{labels.max() + 1}")
    pixels = np.clip((values + 1.0) / 2.0, 0.0, 1.0).reshape(-1, 1, 16, 16)
    return torch.from_numpy(pixels), torch.from_numpy(labels)


def usps_framed(image_size: int | None) -> bool:
    """Whether USPS loaded at ``image_size`` is framed like MNIST (:data:`USPS_BOX`): above 16 px."""
    return image_size is not None and image_size > USPS_INFO.image_size


def load_usps(
    *,
    train: bool = True,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Load USPS from ``<root>/usps/usps.bz2`` (train) or ``usps.t.bz2`` (test), torchvision's files.

    The file is parsed by :func:`read_usps_libsvm` (faster than torchvision's reader, keeps
    float pixels, accepts sparse lines); ``download=True`` fetches a missing file with
    torchvision's URL and md5. Copies whose md5 differs from torchvision's load fine.

    Args:
        train: 7,291 training or 2,007 test images.
        root: Data root (the folder holding ``usps/``), default :func:`data_root`.
        download: Fetch a missing file.
        image_size: Side length, default 16 (native); larger sizes frame the digit like MNIST's
            (:data:`USPS_BOX`), normalised with the framed training statistics.
        channels: 1 (default) or 3.

    Returns:
        images float32 ``[N, channels, S, S]``, labels int64 ``[N]`` in 0..9.

    Raises:
        DataNotFoundError: The file is missing and ``download`` is false.
        FormatError: The file is not in the LIBSVM text format.
    """
    from torchvision.datasets import USPS

    def read_framed(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, labels = read_usps_libsvm(path)
        return frame(pixels, image_size, round(image_size * USPS_BOX)), labels

    framed = usps_framed(image_size)
    return _load_split_file("usps", USPS.split_list, read_framed if framed else read_usps_libsvm,
                            USPS_FRAMED_STATS if framed else USPS_STATS, train=train, root=root,
                            download=download, image_size=image_size, channels=channels)


def load_usps_pooled(
    *,
    train: bool = True,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """USPS with its two official splits pooled and re-split at random, 7,438 train / 1,860 test.

    The paper's adaptation experiments read USPS from CoGAN's ``usps_28x28.pkl``: all 9,298
    images split 80/20 at random rather than the official 7,291 / 2,007 split, whose test
    writers are notably harder. This loader builds a split of the same kind from the official
    files (the pkl's own draw is not reproducible without the file): the pool is the official
    training then test images, permuted by a ``torch.Generator`` seeded with
    :data:`USPS_POOLED_SEED`. Arguments, files, framing and normalisation are those of
    :func:`load_usps`.

    Returns:
        images float32 ``[N, channels, S, S]``, labels int64 ``[N]`` in 0..9 (``N`` = 7,438 or 1,860
        for the full files; 80 % / 20 % of the pool for other copies).
    """
    parts = [load_usps(train=split, root=root, download=download, image_size=image_size, channels=channels)
             for split in (True, False)]
    images = torch.cat([part.images for part in parts])
    labels = torch.cat([part.labels for part in parts])
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(USPS_POOLED_SEED))
    cut = round(USPS_POOLED_TRAIN * len(labels))
    keep = order[:cut] if train else order[cut:]
    return replace(parts[0], name="usps-pooled", images=images[keep], labels=labels[keep])


def read_svhn_mat(path: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an SVHN cropped-digits ``.mat`` file (format 2) as torchvision does.

    Args:
        path: A ``{train,test,extra}_32x32.mat`` file with ``X`` uint8 ``[32, 32, 3, N]`` and
            ``y`` ``[N, 1]`` in 1..10, where 10 stands for the digit 0.

    Returns:
        ``(pixels, labels)``: uint8 ``[N, 3, 32, 32]`` and int64 ``[N]`` in 0..9.

    Raises:
        DDSecError: scipy is not installed.
        FormatError: The file is not such a ``.mat`` file.
    """
    try:
        import scipy.io as sio
    except ImportError as exc:  # pragma: no cover - scipy is installed wherever tests run
        raise DDSecError("reading SVHN needs scipy: pip install scipy") from exc
    try:
        mat: dict[str, Any] = sio.loadmat(os.fspath(path))
    except (ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise FormatError(f"{path} is not a readable SVHN .mat file: {exc}") from exc
    x, y = mat.get("X"), mat.get("y")
    if (
        not isinstance(x, np.ndarray)
        or not isinstance(y, np.ndarray)
        or x.ndim != 4
        or x.shape[2] != 3
        or y.size != x.shape[3]
    ):
        raise FormatError(f"{path} is not an SVHN .mat file: expected X [H, W, 3, N] and y [N, 1]")
    labels = y.astype(np.int64).reshape(-1)
    labels[labels == 10] = 0
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise FormatError(f"{path}: SVHN labels must lie in 1..10, found {labels.min()}..{labels.max()}")
    if x.dtype != np.uint8:
        x = np.clip(x, 0, 255).astype(np.uint8)
    pixels = np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)))  # [N, C, H, W], as torchvision
    return torch.from_numpy(pixels), torch.from_numpy(labels)


def load_svhn(
    *,
    train: bool = True,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Load SVHN (cropped digits) from ``<root>/svhn/{train,test}_32x32.mat``.

    The ``.mat`` file is read with :func:`read_svhn_mat` (torchvision's reader rejects any file
    whose md5 differs from the official one even without ``download``); ``download=True``
    fetches the official file with torchvision's URL and md5.

    Args:
        train: 73,257 training or 26,032 test images.
        root: Data root (the folder holding ``svhn/``), default :func:`data_root`.
        download: Fetch a missing file.
        image_size: Side length, default 32.
        channels: 3 (default) or 1.

    Returns:
        images float32 ``[N, channels, S, S]``, labels int64 ``[N]`` in 0..9 (digit 0 is label 0).

    Raises:
        DataNotFoundError: The file is missing and ``download`` is false.
        FormatError: The file is not an SVHN ``.mat`` file.
    """
    from torchvision.datasets import SVHN

    return _load_split_file("svhn", SVHN.split_list, read_svhn_mat, SVHN_STATS, train=train, root=root,
                            download=download, image_size=image_size, channels=channels)


def load_cifar10(
    *,
    train: bool = True,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Load CIFAR-10 through ``torchvision.datasets.CIFAR10`` from ``<root>/cifar-10-batches-py/``.

    torchvision verifies every batch file against the official md5 before unpickling it, so
    only the official files are ever unpickled.

    Args:
        train: 50,000 training or 10,000 test images.
        root: Data root (the folder holding ``cifar-10-batches-py/``), default :func:`data_root`.
        download: Fetch and unpack the official archive with torchvision.
        image_size: Side length, default 32.
        channels: 3 (default) or 1.

    Returns:
        images float32 ``[N, channels, S, S]``, labels int64 ``[N]`` in 0..9.

    Raises:
        DataNotFoundError: The files are missing or not the official ones, and ``download`` is false.
    """
    from torchvision.datasets import CIFAR10

    check_size_and_channels(image_size, channels)
    base = data_root(root)
    folder = base / CIFAR10.base_folder
    try:
        ds = CIFAR10(root=str(base), train=train, download=download)
    except (RuntimeError, OSError) as exc:
        if download:
            raise _download_failed("CIFAR-10", base, exc) from exc
        raise _not_found(
            "CIFAR-10",
            folder,
            "the official data_batch_1..5, test_batch and batches.meta (python version, md5-checked)",
        ) from exc
    pixels = torch.from_numpy(np.ascontiguousarray(np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2)))
    return build_dataset(
        "cifar10",
        pixels,
        torch.as_tensor(ds.targets, dtype=torch.int64),
        class_names=tuple(ds.classes),
        mean=CIFAR10_STATS[0],
        std=CIFAR10_STATS[1],
        image_size=image_size,
        channels=channels,
    )
