
import pytest
import torch

from ddsec.data import dataset_info, list_datasets, load_dataset
from ddsec.errors import DDSecError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train=True), load_dataset("digits", train=False)


def test_digits_offline_shapes_and_counts(digits):
    train, test = digits
    assert len(train) + len(test) == 1797
    assert len(test) == 450  # a quarter, stratified
    for ds in digits:
        assert ds.name == "digits"
        assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
        assert ds.image_shape == (1, 28, 28)
        assert ds.num_classes == 10 and ds.class_names == tuple("0123456789")
        assert int(ds.labels.min()) == 0 and int(ds.labels.max()) == 9
    assert train.mean == test.mean and train.std == test.std


def test_digits_split_is_class_balanced_and_deterministic(digits):
    train, test = digits
    for ds in digits:
        counts = torch.bincount(ds.labels, minlength=10)
        assert counts.max() - counts.min() <= 6  # the 1797 digits have 174..183 per class
    again = load_dataset("digits", train=False)
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    train_frac = torch.bincount(train.labels, minlength=10) / (
        torch.bincount(train.labels, minlength=10) + torch.bincount(test.labels, minlength=10)
    )
    assert torch.all((train_frac - 0.75).abs() < 0.01)


def test_digits_train_is_normalised(digits):
    train, _ = digits
    assert abs(float(train.images.mean())) < 1e-3
    assert abs(float(train.images.std()) - 1.0) < 1e-3
    pixels = train.denormalize(train.images)
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0


def test_digits_conversion():
    ds = load_dataset("digits", train=False, image_size=32, channels=3)
    assert ds.image_shape == (3, 32, 32) and len(ds.mean) == 3 and len(set(ds.mean)) == 1
    assert load_dataset("digits", image_size=8).image_shape == (1, 8, 8)


def test_registry():
    assert list_datasets() == sorted(["digits", "mnist", "usps", "usps-pooled", "svhn", "cifar10", "imagefolder", "voc", "cub"])
    assert dataset_info("digits") == (1, 28, 10)
    assert dataset_info("MNIST") == (1, 28, 10)
    assert dataset_info("usps") == (1, 16, 10)
    assert dataset_info("svhn") == (3, 32, 10)
    assert dataset_info("cifar10").num_classes == 10
    assert dataset_info("imagefolder").num_classes is None


def test_unknown_dataset_is_a_one_line_error():
    with pytest.raises(DDSecError) as info:
        load_dataset("imagenet-21k")
    message = str(info.value)
    assert "\n" not in message and "imagenet-21k" in message and "mnist" in message and "digits" in message
    with pytest.raises(DDSecError):
        dataset_info("nope")


def test_bad_channels_is_ddsec_error():
    with pytest.raises(DDSecError):
        load_dataset("digits", channels=2)


def test_loading_does_not_print(capsys):
    load_dataset("digits", train=False)
    assert capsys.readouterr() == ("", "")
