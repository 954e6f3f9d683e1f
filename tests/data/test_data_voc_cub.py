"""PASCAL VOC 2007 crops and CUB-200-2011 on tiny trees in the official layouts (no network)."""

import pytest
import torch

from ddsec.data import dataset_info, list_datasets, load_dataset
from ddsec.errors import DataNotFoundError, FormatError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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


def test_voc_object_crops(tmp_path, trees):
    trees.voc(tmp_path)
    train = load_dataset("voc", root=tmp_path, image_size=32)
    assert train.images.shape == (3, 3, 32, 32)  # the difficult person is skipped
    assert train.labels.tolist() == [11, 7, 19]  # dog, cat, tvmonitor
    assert train.num_classes == 20 and train.class_names[:3] == ("aeroplane", "bicycle", "bird")
    assert train.class_names[19] == "tvmonitor"
    assert train.mean == IMAGENET_MEAN and train.std == IMAGENET_STD
    assert_colour(train, 0, trees.RED)
    assert_colour(train, 1, trees.GREEN)
    assert_colour(train, 2, trees.BLUE)  # box clamped to the image's right edge
    test = load_dataset("voc", root=tmp_path, train=False, image_size=16)
    assert test.images.shape == (1, 3, 16, 16) and test.labels.tolist() == [0]  # no <difficult>: kept


def test_voc_normalisation_default_size_and_grey(tmp_path, trees):
    trees.voc(tmp_path)
    test = load_dataset("voc", root=tmp_path, train=False)
    assert test.image_shape == (3, 224, 224)
    expected = torch.tensor([(c / 255 - m) / s for c, m, s in zip(trees.GREEN, IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(test.images[0].mean(dim=(1, 2)), expected, atol=0.1)
    grey = load_dataset("voc", root=tmp_path, train=False, image_size=8, channels=1)
    assert grey.images.shape == (1, 1, 8, 8) and len(grey.mean) == len(grey.std) == 1


def test_voc_missing_folder_and_split(tmp_path, trees):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("voc", root=tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "VOCdevkit" / "VOC2007") in message
    assert "VOCtrainval_06-Nov-2007.tar" in message and "VOCtest_06-Nov-2007.tar" in message
    assert "no --download" in message
    trees.voc(tmp_path, test=False)
    with pytest.raises(DataNotFoundError, match="test.txt"):
        load_dataset("voc", root=tmp_path, train=False)


def test_voc_malformed_files(tmp_path, trees):
    voc = trees.voc(tmp_path)
    xml = voc / "Annotations" / "000003.xml"
    xml.write_text("<annotation><object><name>dog</name>")
    with pytest.raises(FormatError, match="000003.xml"):
        load_dataset("voc", root=tmp_path, train=False)
    xml.write_text(f"<annotation>{trees.voc_object('unicorn', (1, 1, 5, 5))}</annotation>")
    with pytest.raises(FormatError, match="000003.xml.*unicorn"):
        load_dataset("voc", root=tmp_path, train=False)
    xml.write_text(f"<annotation>{trees.voc_object('cat', (1, 1, 5, 5))}</annotation>")
    (voc / "JPEGImages" / "000003.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(FormatError, match="000003.jpg"):
        load_dataset("voc", root=tmp_path, train=False)
    (voc / "JPEGImages" / "000003.jpg").unlink()
    with pytest.raises(DataNotFoundError, match="000003.jpg"):
        load_dataset("voc", root=tmp_path, train=False)


# --- CUB -------------------------------------------------------------------------------------


def test_cub_official_split(tmp_path, trees):
    trees.cub(tmp_path)
    train = load_dataset("cub", root=tmp_path, image_size=32)
    test = load_dataset("cub", root=tmp_path, train=False, image_size=32)
    assert train.images.shape == (3, 3, 32, 32) and test.images.shape == (2, 3, 32, 32)
    assert train.labels.tolist() == [0, 2, 1] and test.labels.tolist() == [1, 0]
    assert train.class_names == ("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross")
    assert train.num_classes == 3 and train.mean == IMAGENET_MEAN and train.std == IMAGENET_STD
    for index, colour in enumerate((trees.RED, trees.BLUE, trees.GREEN)):  # whole images, resized
        assert_colour(train, index, colour)
    expected = torch.tensor([(c / 255 - m) / s for c, m, s in zip(trees.GREEN, IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(test.images[0].mean(dim=(1, 2)), expected, atol=0.1)
    assert load_dataset("cub", root=tmp_path, train=False).image_shape == (3, 224, 224)


def test_cub_missing_and_malformed(tmp_path, trees):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("cub", root=tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "CUB_200_2011") in message
    assert "https://data.caltech.edu/records/65de6-vfk28" in message and "CUB_200_2011.tgz" in message
    assert "no --download" in message
    cub = trees.cub(tmp_path)
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
