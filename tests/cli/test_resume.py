"""Resuming through the command line: every front end refuses a checkpoint made with other task
settings (one line naming them), accepts changed runtime settings, says where it resumes, and
refuses ``--resume`` with nothing to resume; counts larger than a population are capped up front."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ddsec import __version__
from ddsec.cli import app
from ddsec.export import load_distilled
from ddsec.models_zoo.train import TrainRecipe
from ddsec.models_zoo.zoo import train_entry

runner = CliRunner()
DISTILL = ["distill", "--model", "test_cnn", "--steps", "2", "--epochs", "1", "--n-models", "2", "--batch-size", "32",
           "--eval-models", "2", "--eval-every", "0", "--quiet"]
CONDENSE = ["distill", "--method", "dc", "--model", "test_cnn", "--batch-size", "16", "--eval-models", "1",
            "--eval-epochs", "2", "--quiet"]


def interrupt_after(monkeypatch, module, name: str, calls: int) -> None:
    """Make ``module.name`` raise KeyboardInterrupt (as Ctrl-C would) from its ``calls + 1``-th call on."""
    original, count = getattr(module, name), [0]

    def wrapped(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


def interrupted_engine_run(monkeypatch, args: list[str]) -> None:
    """Run ``args`` until Ctrl-C after two outer iterations: exit 130, a checkpoint left."""
    import ddsec.engine.outer as outer

    with monkeypatch.context() as patch:
        interrupt_after(patch, outer, "meta_grads", 2)
        result = runner.invoke(app, args)
    assert result.exit_code == 130, result.output


def refused(args: list[str], *settings: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if not line.startswith("note:")]
    assert len(lines) == 1 and "other settings" in lines[0] and "Traceback" not in result.output, result.output
    for setting in settings:
        assert setting in lines[0], lines[0]


def resumed(args: list[str], done: int, total: int) -> dict:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"resuming from iteration {done} of {total}" in result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_distill_resume_refuses_other_settings_and_accepts_runtime_ones(monkeypatch, tmp_path):
    out = tmp_path / "d.safetensors"
    run = [*DISTILL, "--iterations", "4", "--out", str(out)]
    interrupted_engine_run(monkeypatch, run)
    refused([*run, "--resume", "--ipc", "2"], "ipc")
    refused([*run, "--resume", "--seed", "1"], "seed")
    payload = resumed([*run, "--resume", "--device", "cpu", "--data-dir", str(tmp_path), "--theta-every", "auto",
                       "--compile", "off", "--json"], 2, 4)
    assert payload["output"] == str(out) and load_distilled(out).lrs.shape == (2,)


@pytest.fixture
def zoo(digits_mlp_zoo):
    return digits_mlp_zoo


def test_poison_resume_refuses_another_attack(monkeypatch, zoo, tmp_path):
    out = tmp_path / "p.safetensors"
    run = ["poison", "--zoo", str(zoo), "--model", "mlp", "--iterations", "4", "--n-models", "2", "--batch-size", "64",
           "--eval-models", "2", "--quiet", "--out", str(out)]
    interrupted_engine_run(monkeypatch, run)
    refused([*run, "--resume", "--target", "7"], "target")
    refused([*run, "--resume", "--attack", "5"], "attack")
    refused([*run, "--resume", "--attack-weight", "3"], "attack_weight")
    payload = resumed([*run, "--resume", "--device", "cpu", "--json"], 2, 4)
    assert (payload["attack"], payload["target"]) == (3, 8)
    meta = load_distilled(out).meta
    assert (meta.attack_class, meta.target_class) == (3, 8)


def test_poison_caps_eval_models_to_the_heldout_population_and_names_classes_once(zoo, tmp_path):
    result = runner.invoke(app, ["poison", "--zoo", str(zoo), "--model", "mlp", "--iterations", "1", "--n-models", "2",
                                 "--batch-size", "64", "--eval-models", "50", "--quiet", "--json",
                                 "--out", str(tmp_path / "p.safetensors")])
    assert result.exit_code == 0, result.output
    assert "--eval-models 50 is more than the 3 held-out models: evaluating all 3" in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["eval"]["models"] == 3
    assert "│ 3 (attacked)" in result.stdout and "3 3" not in result.stdout
    default = runner.invoke(app, ["poison", "--zoo", str(zoo), "--model", "mlp", "--iterations", "1", "--n-models", "2",
                                  "--batch-size", "64", "--quiet", "--json", "--out", str(tmp_path / "d.safetensors")])
    assert default.exit_code == 0, default.output
    assert "eval-models" not in default.stderr  # the default (50) is no request: the 3 models, silently
    assert json.loads(default.stdout.strip().splitlines()[-1])["eval"]["models"] == 3


def test_condense_resume_refuses_another_ipc(monkeypatch, tmp_path):
    import ddsec.condense.run as run_module

    out = tmp_path / "dc.safetensors"
    run = [*CONDENSE, "--iterations", "4", "--out", str(out)]
    original = run_module.build_step

    def interrupted_step(job):
        step, calls = original(job), [0]

        def wrapped(*args):
            calls[0] += 1
            if calls[0] > 2:
                raise KeyboardInterrupt
            return step(*args)

        return wrapped

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "build_step", interrupted_step)
        assert runner.invoke(app, run).exit_code == 130
    refused([*run, "--resume", "--ipc", "2"], "ipc")
    resumed([*run, "--resume", "--device", "cpu", "--json"], 2, 4)


@pytest.mark.realdata
def test_adapt_resume_refuses_another_target(monkeypatch, data_root, tmp_path):
    zoo = tmp_path / "zoo"
    train_entry("mnist-mlp", dataset="mnist", model_name="mlp", count=3, heldout=2, root=zoo, data_dir=str(data_root),
                recipe=TrainRecipe(steps=20))
    out = tmp_path / "a.safetensors"
    run = ["adapt", "--src", "mnist", "--tgt", "usps", "--model", "mlp", "--zoo", str(zoo), "--data-dir", str(data_root),
           "--steps", "1", "--epochs", "1", "--iterations", "4", "--n-models", "2", "--quiet", "--out", str(out)]
    interrupted_engine_run(monkeypatch, run)
    refused([*run[:4], "usps-pooled", *run[5:], "--resume"], "tgt")
    payload = resumed([*run, "--resume", "--device", "cpu", "--json"], 2, 4)
    assert payload["eval"]["models"] == 2  # the default --eval-models 20, capped to the 2 held-out models


@pytest.mark.parametrize("command", [DISTILL, CONDENSE])
def test_resume_without_a_checkpoint_is_one_line_before_any_work(command, tmp_path):
    out = tmp_path / "none.safetensors"
    result = runner.invoke(app, [*command, "--out", str(out), "--resume"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"error: --resume: there is no checkpoint {out}.ckpt to resume (a finished run"
                                     " removes it); run the command without --resume to start")
    both = runner.invoke(app, [*command, "--out", str(out), "--resume", "--force"])
    assert both.exit_code == 1 and "pass only one" in both.stderr


def test_version_is_the_installed_distribution_s():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"ddsec {version('ddsec')}" == f"ddsec {__version__}"


def test_poison_says_when_no_batch_met_the_collateral_budget(zoo, tmp_path):
    result = runner.invoke(app, ["poison", "--zoo", str(zoo), "--model", "mlp", "--iterations", "2", "--n-models", "2",
                                 "--batch-size", "64", "--max-collateral", "0.000001", "--json",
                                 "--out", str(tmp_path / "p.safetensors")])
    assert result.exit_code == 0, result.output
    crafting = json.loads(result.stdout.strip().splitlines()[-1])["crafting"]
    assert crafting["train_collateral_bound"] > 0.000001 and crafting["budget_met"] is False
    assert "BUDGET NOT MET" in result.stdout
