"""PASCAL VOC 2007 crops and CUB-200-2011 on tiny trees in the official layouts (no network)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddsec.data import dataset_info, list_datasets, load_dataset
from ddsec.errors import DataNotFoundError, FormatError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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


def mean_colour(ds, index: int) -> list[float]:
    """Mean RGB pixel (in [0, 1]) of one image of ``ds``."""
    return ds.denormalize(ds.images[index], clamp=False).mean(dim=(1, 2)).tolist()


def assert_colour(ds, index: int, rgb: tuple[int, int, int]) -> None:
    assert mean_colour(ds, index) == pytest.approx([c / 255 for c in rgb], abs=0.03)


# --- registry --------------------------------------------------------------------------------


def test_registered_with_imagenet_defaults():
    assert {"voc", "cub"} <= set(list_datasets())
    assert dataset_info("voc") == (3, 224, 20)
    assert dataset_info("cub") == (3, 224, 200)


# --- VOC -------------------------------------------------------------------------------------


def test_voc_object_crops(tmp_path):
    write_voc(tmp_path)
    train = load_dataset("voc", root=tmp_path, image_size=32)
    assert train.images.shape == (3, 3, 32, 32)  # the difficult person is skipped
    assert train.labels.tolist() == [11, 7, 19]  # dog, cat, tvmonitor
    assert train.num_classes == 20 and train.class_names[:3] == ("aeroplane", "bicycle", "bird")
    assert train.class_names[19] == "tvmonitor"
    assert train.mean == IMAGENET_MEAN and train.std == IMAGENET_STD
    assert_colour(train, 0, RED)
    assert_colour(train, 1, GREEN)
    assert_colour(train, 2, BLUE)  # box clamped to the image's right edge
    test = load_dataset("voc", root=tmp_path, train=False, image_size=16)
    assert test.images.shape == (1, 3, 16, 16) and test.labels.tolist() == [0]  # no <difficult>: kept


def test_voc_normalisation_default_size_and_grey(tmp_path):
    write_voc(tmp_path)
    test = load_dataset("voc", root=tmp_path, train=False)
    assert test.image_shape == (3, 224, 224)
    expected = torch.tensor([(c / 255 - m) / s for c, m, s in zip(GREEN, IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(test.images[0].mean(dim=(1, 2)), expected, atol=0.1)
    grey = load_dataset("voc", root=tmp_path, train=False, image_size=8, channels=1)
    assert grey.images.shape == (1, 1, 8, 8) and len(grey.mean) == len(grey.std) == 1


def test_voc_missing_folder_and_split(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("voc", root=tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "VOCdevkit" / "VOC2007") in message
    assert "VOCtrainval_06-Nov-2007.tar" in message and "VOCtest_06-Nov-2007.tar" in message
    assert "no --download" in message
    write_voc(tmp_path, test=False)
    with pytest.raises(DataNotFoundError, match="test.txt"):
        load_dataset("voc", root=tmp_path, train=False)


def test_voc_malformed_files(tmp_path):
    voc = write_voc(tmp_path)
    xml = voc / "Annotations" / "000003.xml"
    xml.write_text("<annotation><object><name>dog</name>")
    with pytest.raises(FormatError, match="000003.xml"):
        load_dataset("voc", root=tmp_path, train=False)
    xml.write_text(f"<annotation>{voc_object('unicorn', (1, 1, 5, 5))}</annotation>")
    with pytest.raises(FormatError, match="000003.xml.*unicorn"):
        load_dataset("voc", root=tmp_path, train=False)
    xml.write_text(f"<annotation>{voc_object('cat', (1, 1, 5, 5))}</annotation>")
    (voc / "JPEGImages" / "000003.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(FormatError, match="000003.jpg"):
        load_dataset("voc", root=tmp_path, train=False)
    (voc / "JPEGImages" / "000003.jpg").unlink()
    with pytest.raises(DataNotFoundError, match="000003.jpg"):
        load_dataset("voc", root=tmp_path, train=False)


# --- CUB -------------------------------------------------------------------------------------


def test_cub_official_split(tmp_path):
    write_cub(tmp_path)
    train = load_dataset("cub", root=tmp_path, image_size=32)
    test = load_dataset("cub", root=tmp_path, train=False, image_size=32)
    assert train.images.shape == (3, 3, 32, 32) and test.images.shape == (2, 3, 32, 32)
    assert train.labels.tolist() == [0, 2, 1] and test.labels.tolist() == [1, 0]
    assert train.class_names == ("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross")
    assert train.num_classes == 3 and train.mean == IMAGENET_MEAN and train.std == IMAGENET_STD
    for index, colour in enumerate((RED, BLUE, GREEN)):  # whole images, resized
        assert_colour(train, index, colour)
    expected = torch.tensor([(c / 255 - m) / s for c, m, s in zip(GREEN, IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(test.images[0].mean(dim=(1, 2)), expected, atol=0.1)
    assert load_dataset("cub", root=tmp_path, train=False).image_shape == (3, 224, 224)


def test_cub_missing_and_malformed(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("cub", root=tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "CUB_200_2011") in message
    assert "https://data.caltech.edu/records/65de6-vfk28" in message and "CUB_200_2011.tgz" in message
    assert "no --download" in message
    cub = write_cub(tmp_path)
    (cub / "train_test_split.txt").unlink()
    with pytest.raises(DataNotFoundError, match="train_test_split.txt"):
        load_dataset("cub", root=tmp_path)
    (cub / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n4 0\n5 x\n")
    with pytest.raises(FormatError, match="train_test_split.txt"):
        load_dataset("cub", root=tmp_path)
    (cub / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n4 0\n5 1\n")
    (cub / "image_class_labels.txt").write_text("1 1\n2 2\n3 9\n")
    with pytest.raises(FormatError, match="image_class_labels.txt"):
        load_dataset("cub", root=tmp_path)
