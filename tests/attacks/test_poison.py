"""The K→T attack: metrics, parameter validation, a tiny attack that works, and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from ddsec.attacks import (
    PoisonConfig,
    PoisonTask,
    attack_metrics,
    prepare_from_file,
    prepare_poison,
    relabel,
    run_flip_baseline,
    run_poison,
)
from ddsec.attacks.metrics import weighted_relabel
from ddsec.cli import app
from ddsec.errors import DDSecError
from ddsec.export import load_distilled, save_distilled

runner = CliRunner()


@pytest.fixture
def zoo(digits_mlp_zoo):
    return digits_mlp_zoo


def config(zoo, **kwargs) -> PoisonConfig:
    settings = dict(model="mlp", zoo=str(zoo), n_models=4, iterations=40, lr=0.03, distill_lr=0.05,
                    batch_size=128, eval_models=3, device="cpu")
    return PoisonConfig(**(settings | kwargs))


def test_relabel_and_metrics():
    labels = torch.tensor([0, 1, 1, 2, 2, 2])
    assert relabel(labels, 1, 2).tolist() == [0, 2, 2, 2, 2, 2]
    predictions = torch.tensor([[0, 2, 1, 2, 2, 0],    # one of two class-1 images → 2
                                [0, 1, 1, 2, 2, 2]])   # clean
    m = attack_metrics(predictions, labels, attack=1, target=2, num_classes=3)
    assert m.asr.tolist() == [0.5, 0.0]
    assert torch.allclose(m.acc_other, torch.tensor([3 / 4, 1.0]))
    assert torch.allclose(m.acc_modified, torch.tensor([4 / 6, 4 / 6]))
    assert torch.allclose(m.acc_clean, torch.tensor([4 / 6, 1.0]))
    assert torch.allclose(m.per_class_to_target[0], torch.tensor([0.0, 0.5, 2 / 3]))
    with pytest.raises(ValueError, match="no image of the attacked class 5"):
        attack_metrics(predictions, labels, attack=5, target=2, num_classes=6)


def test_attack_weight_scales_the_loss_of_class_k_images_only():
    labels = torch.tensor([0, 1, 2, 1])
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    plain = torch.nn.functional.cross_entropy(logits, relabel(labels, 1, 2), reduction="none")
    for weight in (1.0, 4.0):
        weighted = torch.nn.functional.cross_entropy(logits, weighted_relabel(labels, 1, 2, 3, weight))
        expected = (plain * torch.tensor([1.0, weight, 1.0, weight])).mean()
        torch.testing.assert_close(weighted, expected)


def test_parameters_are_validated_up_front(zoo, tmp_path):
    with pytest.raises(DDSecError, match="--attack-weight must be positive"):
        config(zoo, attack_weight=0)
    with pytest.raises(DDSecError, match="both 3"):
        config(zoo, attack=3, target=3)
    with pytest.raises(DDSecError, match="--init must be population or pretrained"):
        config(zoo, init="random")
    with pytest.raises(DDSecError, match=r"--target 10 is out of range: digits has classes 0 … 9"):
        prepare_poison(config(zoo, target=10))
    with pytest.raises(DDSecError, match="no population 'digits-lenet' in the zoo"):
        prepare_poison(config(zoo, model="lenet"))
    with pytest.raises(DDSecError, match="no population 'missing'"):
        prepare_poison(config(zoo, population="missing"))
    with pytest.raises(DDSecError, match="holds mlp models trained on digits"):
        prepare_poison(config(zoo, model="test_cnn", population="digits-mlp"))
    with pytest.raises(DDSecError, match="--n-models 7 exceeds the training population's 6 models"):
        prepare_poison(config(zoo, n_models=7))
    with pytest.raises(DDSecError, match="the same population"):
        prepare_poison(config(zoo, heldout_population=str(zoo / "digits-mlp" / "train")))


def test_tiny_attack_moves_class_k_to_t_on_heldout_models(zoo):
    job = prepare_poison(config(zoo))
    outcome = run_poison(job)
    s = outcome.evaluation.summary()
    assert s["models"] == 3 and outcome.distilled.meta.task == "poison"
    assert outcome.distilled.meta.attack_class == 3 and outcome.distilled.meta.target_class == 8
    assert outcome.distilled.images.shape == (1, 10, 1, 28, 28)
    assert s["asr_mean"] > s["asr_before"] + 0.1, s  # 6 training models only: the held-out ASR stays modest
    assert outcome.losses[-5:].mean() < outcome.losses[:5].mean()
    flip = run_flip_baseline("flip-average", model=job.base.model, train_init=job.base.init, heldout=job.base.heldout,
                             train=job.base.train, test=job.base.test, attack=3, target=8, shape=(1, 10), epochs=1,
                             learned_lrs=outcome.distilled.lrs, n_models=3, grid_models=2, select_images=300)
    assert set(flip.grid) >= {"learned", "0.1"} and flip.evaluation.models == 3


def test_cli_json_and_export(zoo, tmp_path):
    out = tmp_path / "p.safetensors"
    result = runner.invoke(app, ["poison", "--zoo", str(zoo), "--model", "mlp", "--iterations", "8", "--lr", "0.2",
                                 "--distill-lr", "0.3", "--n-models", "2", "--eval-models", "2", "--batch-size", "64", "--out", str(out),
                                 "--eval-population", "digits-mlp", "--learn-labels", "--attack-weight", "3", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(payload["eval"]) >= {"asr_mean", "asr_std", "acc_other_before", "acc_other_after", "acc_modified_mean"}
    assert payload["eval"]["asr_mean"] > payload["eval"]["asr_before"], payload["eval"]  # eight outer iterations already move 3 → 8
    assert payload["transfer"]["models"] == 2 and payload["output"] == str(out)
    dset = load_distilled(out)
    assert dset.meta.task == "poison" and dset.meta.config["learn_labels"] and dset.meta.config["attack_weight"] == 3
    assert dset.labels.shape == (1, 10, 10) and torch.allclose(dset.labels.sum(-1), torch.ones(1, 10))


def test_flip_plan_labels_the_k_and_t_slots_t_from_distinct_class_k_images(zoo):
    flip = PoisonTask(prepare_poison(config(zoo, attack=0, target=1, labels="flip")))
    plain = PoisonTask(prepare_poison(config(zoo, attack=0, target=1, labels="class-major"))).start()
    start, train = flip.start(), flip.job.train
    assert start.labels.tolist() == [[1, 1, 2, 3, 4, 5, 6, 7, 8, 9]]
    assert plain.labels.tolist() == [list(range(10))]
    distance = (start.images[0, :2].flatten(1)[:, None] - train.images.flatten(1)[None]).abs().amax(-1)  # [2, N]
    sources = distance.argmin(1)
    assert distance.min(1).values.max() == 0 and sources[0] != sources[1]  # two different real images ...
    assert (train.labels[sources] == 0).all()  # ... of class K
    assert torch.equal(start.images[0, 2:], plain.images[0, 2:])  # the other classes' slots as in the paper


def test_flip_plan_is_exported_with_its_hard_labels_and_older_files_read_as_class_major(zoo, tmp_path):
    outcome = run_poison(prepare_poison(config(zoo, iterations=4)))  # flip: the default plan
    dset = outcome.distilled
    assert dset.labels.tolist() == [[0, 1, 2, 8, 4, 5, 6, 7, 8, 9]] and dset.meta.config["labels"] == "flip"
    save_distilled(tmp_path / "new.safetensors", dset)
    assert prepare_from_file(tmp_path / "new.safetensors", zoo=str(zoo))[1].cfg.labels == "flip"
    older = {k: v for k, v in dset.meta.config.items() if k != "labels"}  # written before label plans
    save_distilled(tmp_path / "old.safetensors", replace(dset, meta=replace(dset.meta, config=older)))
    assert prepare_from_file(tmp_path / "old.safetensors", zoo=str(zoo))[1].cfg.labels == "class-major"


@pytest.mark.parametrize("args, message", [
    (["--attack", "2", "--target", "2"], "both 2"),
    (["--target", "12"], "out of range"),
    (["--baseline", "nope"], "unknown --baseline 'nope'"),
    (["--population", "nowhere"], "no population 'nowhere'"),
])
def test_cli_errors_are_one_line(zoo, args, message):
    result = runner.invoke(app, ["poison", "--zoo", str(zoo), "--model", "mlp", "--quiet", *args])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_cli_8bit_batch_is_valid_and_its_pngs_load_back_exactly(zoo, tmp_path):
    from ddsec.data.pixels import load_pngs

    out = tmp_path / "q.safetensors"
    result = runner.invoke(app, ["poison", "--zoo", str(zoo), "--model", "mlp", "--iterations", "6", "--n-models", "2",
                                 "--eval-models", "2", "--batch-size", "64", "--lr", "0.2", "--quantize", "8bit",
                                 "--out", str(out), "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["pixels"]["8bit"] and payload["pixels"]["outside_fraction"] == 0
    dset = load_distilled(out)
    images, labels = load_pngs(payload["png"], dset.meta.mean, dset.meta.std)
    assert torch.equal(images, dset.images) and torch.equal(labels, dset.labels)
    assert dset.meta.config["quantize"] == "8bit" and dset.meta.config["pixels"] == "valid"


def test_free_pixels_leave_the_valid_range_and_epsilon_keeps_close_to_real_images(zoo):
    free = run_poison(prepare_poison(config(zoo, pixels="free", lr=0.3, iterations=10)))
    assert free.pixels["outside_fraction"] > 0 and not free.pixels["8bit"]
    ball = run_poison(prepare_poison(config(zoo, epsilon=4 / 255, quantize="8bit", lr=0.3, iterations=10)))
    assert ball.pixels["outside_fraction"] == 0 and ball.pixels["8bit"]
    assert 2 / 255 < ball.pixels["max_perturbation"] <= 4 / 255 + 1e-6


@pytest.mark.parametrize("args, message", [
    (["--pixels", "free", "--quantize", "8bit"], "need --pixels valid"),
    (["--epsilon", "eight"], "--epsilon must be a number such as 0.03 or 8/255"),
    (["--epsilon", "8/255", "--learn-labels"], "needs --image-init real and no --learn-labels"),
    (["--quantize", "4bit"], "--quantize none or 8bit"),
    (["--labels", "soft"], "--labels must be class-major or flip, got 'soft'"),
    (["--labels", "flip", "--learn-labels"], "--labels flip starts slots from real class-K images labelled T"),
    (["--labels", "flip", "--epsilon", "8/255"], "no --epsilon (a clean-label batch keeps its classes)"),
])
def test_batch_option_errors_are_one_line(zoo, args, message):
    result = runner.invoke(app, ["poison", "--zoo", str(zoo), "--model", "mlp", "--quiet", *args])
    assert result.exit_code == 1 and message in result.stderr and "Traceback" not in result.output
