"""``ddsec distill --method dc|dsa|dm`` and ``ddsec eval --protocol train-epochs`` end to end, tiny settings."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from safetensors.torch import save_file
from typer.testing import CliRunner

from ddsec.cli import app
from ddsec.condense import CondenseConfig
from ddsec.condense.protocol import default_augmentation
from ddsec.errors import DDSecError
from ddsec.export import load_distilled
from ddsec.models_zoo import create_model

runner = CliRunner()
TINY = ["--model", "test_cnn", "--iterations", "2", "--batch-size", "16", "--eval-models", "2",
        "--eval-epochs", "3", "--quiet", "--json"]


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dm_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("dm") / "dm.safetensors"
    result = runner.invoke(app, ["distill", "--method", "dm", "--ipc", "2", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, last_json(result.stdout)


def test_dm_exports_a_one_step_set_that_eval_reads(dm_set):
    out, payload = dm_set
    assert payload["method"] == "dm" and payload["eval"]["models"] == 2
    dset = load_distilled(out)
    assert dset.images.shape == (1, 20, 1, 28, 28) and dset.labels.shape == (1, 20) and dset.lrs.tolist() == pytest.approx([0.01])
    assert dset.meta.task == "distill" and dset.meta.config["method"] == "dm"
    assert dset.meta.config["dsa_strategy"] == "color_crop_cutout_scale_rotate"  # digits: no flip
    assert not out.with_name(out.name + ".ckpt").exists()

    result = runner.invoke(app, ["eval", str(out), "--models", "2", "--epochs", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert "train-epochs (default for a dm set)" in result.stdout
    assert set(last_json(result.stdout)["eval"]) == {"models", "acc_before_mean", "acc_mean", "acc_std"}
    steps = runner.invoke(app, ["eval", str(out), "--models", "2", "--protocol", "steps", "--json"])
    assert steps.exit_code == 0, steps.output
    assert "steps (as distilled)" in steps.stdout


@pytest.mark.parametrize("method", ["dc", "dsa"])
def test_gradient_matching_methods_run(method, tmp_path):
    out = tmp_path / "set.safetensors"
    result = runner.invoke(app, ["distill", "--method", method, *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert load_distilled(out).meta.config["outer_loop"] == 1


def test_kmeans_batch_sampling_caches_its_clusters(tmp_path):
    weights = tmp_path / "features.safetensors"
    model = create_model("test_cnn", num_classes=10, in_chans=1, image_size=28, seed=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    out = tmp_path / "dc.safetensors"
    args = ["distill", "--method", "dc", *TINY, "--batch-sampling", "kmeans", "--clusters", "3",
            "--feature-model", str(weights), "--feature-layer", "0", "--mix-after", "1", "--out", str(out)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "k-means, 3 clusters of test_cnn:0" in first.stdout and "(cached)" not in first.stdout
    second = runner.invoke(app, [*args, "--force"])
    assert second.exit_code == 0, second.output
    assert "(cached)" in second.stdout
    bad = runner.invoke(app, [*args[:-2], "--feature-layer", "conv7", "--out", str(tmp_path / "x.safetensors")])
    assert bad.exit_code == 1 and "unknown --feature-layer 'conv7'" in bad.output


def test_eval_train_epochs_on_an_unrolled_set(tmp_path):
    out = tmp_path / "dd.safetensors"
    made = runner.invoke(app, ["distill", "--model", "test_cnn", "--steps", "2", "--epochs", "1", "--iterations", "1",
                               "--n-models", "1", "--batch-size", "32", "--eval-models", "1", "--quiet", "--out", str(out)])
    assert made.exit_code == 0, made.output
    result = runner.invoke(app, ["eval", str(out), "--protocol", "train-epochs", "--epochs", "2", "--models", "2",
                                 "--augment", "crop_rotate", "--json"])
    assert result.exit_code == 0, result.output
    assert last_json(result.stdout)["eval"]["models"] == 2
    assert "train-epochs (--protocol): 2 epochs" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["distill", "--batch-sampling", "kmeans"], "--batch-sampling does not apply to --method dd"),
        (["distill", "--method", "dm", "--batch-sampling", "kmeans"], "--batch-sampling kmeans applies to --method dc|dsa"),
        (["distill", "--method", "dc", "--batch-sampling", "kmeans"], "needs --feature-model"),
        (["distill", "--method", "dc", "--batch-sampling", "kmeans", "--clusters", "0", "--feature-model", "w.pt"],
         "--clusters must be at least 1"),
        (["distill", "--method", "dc", "--clusters", "3"], "--clusters needs --batch-sampling kmeans"),
        (["distill", "--method", "dc", "--steps", "3"], "--steps applies to --method dd, not dc"),
        (["distill", "--method", "dc", "--dsa-strategy", "crop"], "--dsa-strategy applies to --method dsa|dm"),
        (["distill", "--method", "dsa", "--dsa-strategy", "crop_blur"], "unknown DSA operation 'blur'"),
        (["distill", "--method", "dm", "--outer-loop", "2"], "--outer-loop and --inner-loop apply to"),
        (["distill", "--method", "gan"], "--method must be one of dd, dc, dsa, dm"),
        (["distill", "--method", "dm", "--image-init", "zeros"], "--image-init must be one of real, noise"),
        (["distill", "--method", "dm", "--lr", "0"], "--lr must be positive"),
    ],
)
def test_option_errors_are_one_line(args, message, tmp_path):
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_eval_option_errors(dm_set):
    out, _ = dm_set
    wrong = runner.invoke(app, ["eval", str(out), "--protocol", "fast"])
    assert wrong.exit_code == 1 and "--protocol must be one of steps, train-epochs" in wrong.output
    mixed = runner.invoke(app, ["eval", str(out), "--protocol", "steps", "--epochs", "3"])
    assert mixed.exit_code == 1 and "--epochs and --augment go with --protocol train-epochs" in mixed.output
    blur = runner.invoke(app, ["eval", str(out), "--augment", "crop_blur"])
    assert blur.exit_code == 1 and "unknown DSA operation 'blur' in --augment" in blur.output


@pytest.mark.parametrize(
    ("method", "dataset", "augment", "epochs"),
    [
        ("dc", "mnist", "dc", 1000),  # the reference evaluates MNIST DC sets with augmentation
        ("dc", "digits", "none", 300),
        ("dsa", "mnist", "color_crop_cutout_scale_rotate", 1000),
        ("dm", "usps", "color_crop_cutout_scale_rotate", 1000),
    ],
)
def test_evaluation_defaults_follow_the_reference(method, dataset, augment, epochs):
    cfg = CondenseConfig(method=method, dataset=dataset)
    assert (cfg.eval_augment, cfg.eval_epochs) == (augment, epochs)
    assert default_augmentation(asdict(cfg)) == augment
    assert CondenseConfig(method=method, dataset=dataset, eval_augment="none").eval_epochs == 300
    with pytest.raises(DDSecError, match="in --eval-augment"):
        CondenseConfig(method=method, dataset=dataset, eval_augment="crop_blur")


def test_files_without_eval_augment_keep_their_method_default():
    assert default_augmentation({"method": "dsa", "dsa_strategy": "crop"}) == "crop"
    assert default_augmentation({"method": "dc"}) == "none"


def test_condensation_refuses_a_torchrun_launch(monkeypatch, tmp_path):
    from ddsec.condense import run
    from ddsec.engine import World

    monkeypatch.setattr(run, "world", lambda: World(0, 2))
    result = runner.invoke(app, ["distill", "--method", "dm", *TINY, "--out", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 1 and "runs in one process; launch it without torchrun" in result.output
