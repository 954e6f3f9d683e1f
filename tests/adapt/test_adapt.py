"""Domain adaptation: pair shapes, validation, and a tiny USPS → MNIST run on the real data."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ddsec.adapt import AdaptConfig, finetune_reference, pair_shape, prepare_adapt, source_entry
from ddsec.cli import app
from ddsec.distill import run_distill
from ddsec.errors import DDSecError
from ddsec.export import load_distilled
from ddsec.models_zoo.train import TrainRecipe
from ddsec.models_zoo.zoo import train_entry

runner = CliRunner()


def test_pair_shapes_and_entry_names():
    assert pair_shape("mnist", "usps") == (28, 1) and pair_shape("svhn", "mnist") == (32, 3)
    assert source_entry("mnist", "lenet", 28, 1) == "mnist-lenet"
    assert source_entry("usps", "lenet", 28, 1) == "usps-lenet-28px1c-framed"
    assert source_entry("usps-pooled", "lenet", 28, 1) == "usps-pooled-lenet-28px1c-framed"
    assert source_entry("mnist", "lenet", 32, 3) == "mnist-lenet-32px3c"


@pytest.mark.parametrize("kwargs, message", [
    ({"src": "mnist", "tgt": "mnist"}, r"same domain \(mnist\)"),
    ({"src": "usps", "tgt": "usps-pooled"}, r"same domain \(usps\)"),
    ({"src": "cifar10", "tgt": "mnist"}, "--src must be imagenet or one of mnist, usps, usps-pooled, svhn"),
    ({"init": "random"}, "--init must be population or fixed"),
    ({"steps": 0}, "--steps must be at least 1"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(DDSecError, match=message):
        AdaptConfig(**kwargs)


def test_missing_source_population_says_how_to_train_it(tmp_path, data_root):
    cfg = AdaptConfig(src="usps", tgt="mnist", data_dir=str(data_root), zoo=str(tmp_path), device="cpu")
    with pytest.raises(DDSecError, match="ddsec zoo train --dataset usps --model lenet --image-size 28"):
        prepare_adapt(cfg)


@pytest.fixture(scope="module")
def usps_zoo(tmp_path_factory):
    import os

    if not os.environ.get("DDSEC_DATA"):
        pytest.skip("DDSEC_DATA is not set: real-data test skipped")
    root = tmp_path_factory.mktemp("zoo")
    train_entry(source_entry("usps", "mlp", 28, 1), dataset="usps", model_name="mlp", count=4, heldout=2, root=root, image_size=28,
                recipe=TrainRecipe(steps=60))
    return root


@pytest.mark.realdata
def test_usps_to_mnist_adaptation_improves_target_accuracy(usps_zoo, data_root):
    cfg = AdaptConfig(src="usps", tgt="mnist", model="mlp", zoo=str(usps_zoo), data_dir=str(data_root), steps=2,
                      epochs=1, n_models=2, iterations=15, eval_models=2, device="cpu")
    job = prepare_adapt(cfg)
    assert job.train.name == "mnist" and job.train.image_shape == (1, 28, 28)
    from ddsec.adapt import adapt_meta

    outcome = run_distill(job, meta=adapt_meta(cfg, job))
    s = outcome.evaluation.summary()
    assert s["models"] == 2 and s["acc_mean"] > s["acc_before_mean"] + 0.05, s
    meta = outcome.distilled.meta
    assert (meta.task, meta.source, meta.target, meta.dataset) == ("adapt", "usps", "mnist", "mnist")
    tuned = finetune_reference(job, n_models=2, recipe=TrainRecipe(steps=10))
    assert tuned.shape == (2,) and float(tuned.mean()) > s["acc_before_mean"]
    fixed = prepare_adapt(AdaptConfig(**{**cfg.__dict__, "init": "fixed"}))
    assert fixed.init.kind == "pretrained"


@pytest.mark.realdata
def test_adapt_cli_json(usps_zoo, data_root, tmp_path):
    out = tmp_path / "a.safetensors"
    result = runner.invoke(app, ["adapt", "--src", "usps", "--tgt", "mnist", "--model", "mlp", "--zoo", str(usps_zoo),
                                 "--data-dir", str(data_root), "--steps", "1", "--epochs", "1", "--iterations", "2",
                                 "--n-models", "2", "--eval-models", "2", "--out", str(out), "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(payload["eval"]) >= {"acc_before_mean", "acc_mean", "acc_std"}
    assert load_distilled(out).meta.source == "usps"
    bad = runner.invoke(app, ["adapt", "--src", "usps", "--tgt", "usps", "--quiet"])
    assert bad.exit_code == 1 and "same domain (usps)" in bad.output


@pytest.mark.realdata
def test_adapt_learns_labels_and_checks_eval_every(usps_zoo, data_root, tmp_path):
    out = tmp_path / "soft.safetensors"
    common = ["adapt", "--src", "usps", "--tgt", "mnist", "--model", "mlp", "--zoo", str(usps_zoo),
              "--data-dir", str(data_root), "--steps", "1", "--epochs", "1", "--n-models", "2", "--eval-models", "2",
              "--quiet"]
    result = runner.invoke(app, [*common, "--iterations", "2", "--eval-every", "1", "--learn-labels", "--out", str(out)])
    assert result.exit_code == 0, result.output
    dset = load_distilled(out)
    assert dset.labels.shape == (1, 10, 10) and dset.meta.config["learn_labels"]
    bad = runner.invoke(app, [*common, "--eval-every", "-1"])
    assert bad.exit_code == 1 and "--eval-every must be 0 (never) or positive" in bad.output
