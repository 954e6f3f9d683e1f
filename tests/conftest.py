"""Shared fixtures: tiny smooth models, tiny synthetic sets, and the real-data root."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
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
    synthetic.learned["lr"] = torch.randn(6, generator=gen, dtype=torch.float64)
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


# --- tiny dataset trees in the official VOC / CUB layouts ----------------------------------

GREY, RED, GREEN, BLUE = (128, 128, 128), (255, 0, 0), (0, 255, 0), (0, 0, 255)


def write_jpeg(path: Path, size: tuple[int, int], background, boxes=()) -> None:
    """A one-colour JPEG of ``size = (width, height)`` with 0-based ``(left, upper, right, lower, colour)`` boxes."""
    array = np.empty((size[1], size[0], 3), dtype=np.uint8)
    array[:] = background
    for left, upper, right, lower, colour in boxes:
        array[upper:lower, left:right] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95, subsampling=0)


def voc_object(name: str, box: tuple[int, int, int, int], difficult: str | None = "0") -> str:
    """One ``<object>`` with a 1-based inclusive ``(xmin, ymin, xmax, ymax)`` box."""
    flag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    corners = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return f"<object><name>{name}</name><pose>Left</pose>{flag}<bndbox>{corners}</bndbox></object>"


def write_voc(root: Path, *, test: bool = True) -> Path:
    """A VOC2007 tree: trainval = 000001 (dog + a difficult person), 000002 (cat, tvmonitor past the edge)."""
    voc = root / "VOCdevkit" / "VOC2007"
    # 000001: 48x40 grey, red box at columns 8..23, rows 8..23 (1-based 9..24).
    write_jpeg(voc / "JPEGImages" / "000001.jpg", (48, 40), GREY, [(8, 8, 24, 24, RED)])
    # 000002: 64x32, green box at columns 0..15, rows 0..15; blue from column 40 to the right edge.
    write_jpeg(voc / "JPEGImages" / "000002.jpg", (64, 32), GREY, [(0, 0, 16, 16, GREEN), (40, 0, 64, 32, BLUE)])
    write_jpeg(voc / "JPEGImages" / "000003.jpg", (32, 32), GREEN)
    annotations = {
        "000001": voc_object("dog", (9, 9, 24, 24)) + voc_object("person", (1, 1, 48, 40), difficult="1"),
        "000002": voc_object("cat", (1, 1, 16, 16)) + voc_object("tvmonitor", (41, 1, 100, 32)),
        "000003": voc_object("aeroplane", (1, 1, 32, 32), difficult=None),
    }
    (voc / "Annotations").mkdir(parents=True)
    for image_id, objects in annotations.items():
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename>{objects}</annotation>"
        )
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "trainval.txt").write_text("000001\n000002\n")
    if test:
        (main / "test.txt").write_text("000003\n")
    return voc


def write_cub(root: Path) -> Path:
    """A CUB tree with 3 classes and 5 images (3 train, 2 test); each class has its own colour."""
    cub = root / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    colours = [RED, GREEN, BLUE]
    images = [(1, 1, 1, (40, 30)), (2, 2, 0, (20, 50)), (3, 3, 1, (33, 33)), (4, 1, 0, (16, 16)), (5, 2, 1, (64, 48))]
    lines = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": []}
    for image_id, class_id, is_train, size in images:
        relative = f"{classes[class_id - 1]}/img_{image_id:04d}.jpg"
        write_jpeg(cub / "images" / relative, size, colours[class_id - 1])
        lines["images.txt"].append(f"{image_id} {relative}")
        lines["image_class_labels.txt"].append(f"{image_id} {class_id}")
        lines["train_test_split.txt"].append(f"{image_id} {is_train}")
    lines["classes.txt"] = [f"{i} {name}" for i, name in enumerate(classes, start=1)]
    for name, content in lines.items():
        (cub / name).write_text("\n".join(content) + "\n")
    return cub


def write_voc_every_class(root: Path) -> Path:
    """A VOC2007 tree under ``root`` whose trainval and test images each hold one object of every class."""
    from ddsec.data.voc import VOC_CLASSES

    voc = root / "VOCdevkit" / "VOC2007"
    colours = [(12 * c, 255 - 12 * c, (40 * c) % 256) for c in range(len(VOC_CLASSES))]
    boxes = [(8 * (c % 5), 8 * (c // 5), 8 * (c % 5) + 8, 8 * (c // 5) + 8, colours[c]) for c in range(len(VOC_CLASSES))]
    objects = "".join(voc_object(name, (b[0] + 1, b[1] + 1, b[2], b[3])) for name, b in zip(VOC_CLASSES, boxes))
    (voc / "Annotations").mkdir(parents=True)
    for image_id in ("000001", "000002"):
        write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", (40, 32), GREY, boxes)
        (voc / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{objects}</annotation>")
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n")
    (voc / "ImageSets" / "Main" / "test.txt").write_text("000002\n")
    return root


@pytest.fixture(scope="session")
def trees() -> SimpleNamespace:
    """Writers of tiny dataset trees: ``jpeg``, ``voc_object``, ``voc``, ``voc_every_class`` and ``cub``
    (see above), and the colours."""
    return SimpleNamespace(jpeg=write_jpeg, voc_object=voc_object, voc=write_voc, voc_every_class=write_voc_every_class,
                           cub=write_cub, GREY=GREY, RED=RED, GREEN=GREEN, BLUE=BLUE)


@pytest.fixture(scope="session")
def digits_mlp_zoo(tmp_path_factory) -> Path:
    """A zoo with the entry ``digits-mlp``: 6 + 3 small MLPs trained on digits (about 96 % test accuracy)."""
    from ddsec.models_zoo.train import TrainRecipe
    from ddsec.models_zoo.zoo import train_entry

    root = tmp_path_factory.mktemp("zoo")
    train_entry("digits-mlp", dataset="digits", model_name="mlp", count=6, heldout=3, root=root,
                recipe=TrainRecipe(steps=100, lr=0.01))
    return root


@pytest.fixture(scope="session")
def digits_mlp_attack(digits_mlp_zoo):
    """``(zoo, job, outcome)``: a tiny 3 → 8 batch learned over 4 of the digits MLPs, judged on 3 held-out ones."""
    from ddsec.attacks import PoisonConfig, prepare_poison, run_poison

    cfg = PoisonConfig(model="mlp", zoo=str(digits_mlp_zoo), n_models=4, iterations=40, lr=0.03, distill_lr=0.05,
                       batch_size=128, eval_models=3, device="cpu")
    job = prepare_poison(cfg)
    return digits_mlp_zoo, job, run_poison(job)


@pytest.fixture
def victim_plan() -> list:
    """Five inner steps for a 3-step float64 set of 1×6×6 images: a warm-up clean step, three
    poisoned steps mixed with 4 clean images (one at a scaled step size, one shifted, one at a fixed
    step size), a clean step after."""
    from ddsec.engine import InnerStep

    generator = torch.Generator().manual_seed(0)

    def clean(count: int) -> dict:
        return {"clean_images": torch.randn(count, 1, 6, 6, generator=generator, dtype=torch.float64),
                "clean_labels": torch.randint(0, 3, (count,), generator=generator)}

    return [
        InnerStep(None, lr=0.05, **clean(5)),
        InnerStep(0, lr_index=0, lr_scale=0.5, **clean(4)),
        InnerStep(1, lr_index=1, **clean(4), offsets=torch.randint(0, 3, (10, 2), generator=generator), pad=1),
        InnerStep(2, lr=0.2, **clean(4)),
        InnerStep(None, lr=0.05, **clean(5)),
    ]
