"""ImageNet AlexNet → VOC / CUB on tiny trees with random weights (nothing downloaded)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from ddsec.adapt import AdaptConfig, prepare_adapt
from ddsec.adapt.imagenet import imagenet_alexnet
from ddsec.cli import app
from ddsec.errors import DDSecError
from ddsec.export import load_distilled
from ddsec.models_zoo import create_model

runner = CliRunner()
SIZE = 64  # the smallest convenient AlexNet input


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "alexnet-random.pth"
    torch.save(create_model("alexnet", num_classes=1000, in_chans=3, image_size=SIZE, seed=0).state_dict(), path)
    return path


@pytest.fixture
def voc_root(tmp_path, trees):
    """A VOC2007 tree whose trainval and test images each hold one object of every class."""
    return trees.voc_every_class(tmp_path)


def test_head_is_zero_weight_unit_bias(weights):
    model = imagenet_alexnet(weights, 20, SIZE)
    head = model.classifier[6]
    assert head.out_features == 20 and torch.all(head.weight == 0) and torch.all(head.bias == 1)
    reference = create_model("alexnet", num_classes=1000, in_chans=3, image_size=SIZE, seed=0)
    assert torch.equal(model.features[0].weight, reference.features[0].weight)


def test_missing_weights_and_wrong_settings_are_clear(tmp_path, voc_root):
    with pytest.raises(DDSecError, match="needs --weights PATH: download torchvision's ImageNet AlexNet"):
        prepare_adapt(AdaptConfig(src="imagenet", tgt="voc", model="alexnet", init="fixed", data_dir=str(voc_root)))
    with pytest.raises(DDSecError, match="weights not found at .*nope.pth; download https://download.pytorch.org"):
        prepare_adapt(AdaptConfig(src="imagenet", tgt="voc", model="alexnet", init="fixed", weights="nope.pth",
                                  data_dir=str(voc_root)))
    with pytest.raises(DDSecError, match="--src imagenet adapts one fixed alexnet"):
        AdaptConfig(src="imagenet", tgt="mnist", model="alexnet", init="fixed")


def test_voc_adaptation_runs_end_to_end(weights, voc_root, tmp_path):
    out = tmp_path / "voc.safetensors"
    result = runner.invoke(app, ["adapt", "--src", "imagenet", "--tgt", "voc", "--weights", str(weights),
                                 "--data-dir", str(voc_root), "--image-size", str(SIZE), "--iterations", "1", "--epochs", "1",
                                 "--batch-size", "8", "--eval-models", "1", "--out", str(out), "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["eval"]["models"] == 1
    dset = load_distilled(out)
    assert dset.images.shape == (1, 20, 3, SIZE, SIZE) and dset.lrs.shape == (1,)
    assert (dset.meta.source, dset.meta.target, dset.meta.init) == ("imagenet", "voc", "fixed")
