"""The command line end to end on tiny settings: exit codes, JSON, files, error lines."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ddsec.cli import app
from ddsec.export import load_distilled

runner = CliRunner()
TINY = ["--model", "test_cnn", "--steps", "2", "--epochs", "1", "--iterations", "2", "--n-models", "2",
        "--batch-size", "64", "--eval-models", "2", "--quiet"]


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "set.safetensors"
    result = runner.invoke(app, ["distill", *TINY, "--distill-lr", "1.0", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return out, last_json(result.stdout)


def test_distill_writes_a_loadable_set_and_json(distilled):
    out, payload = distilled
    assert payload["output"] == str(out)
    ev = payload["eval"]
    assert ev["models"] == 2
    assert ev["acc_mean"] > ev["acc_before_mean"] + 0.1, ev  # two steps on 20 distilled images already teach
    dset = load_distilled(out)
    assert dset.images.shape == (2, 10, 1, 28, 28)
    assert dset.meta.task == "distill" and dset.meta.model == "test_cnn" and dset.lrs.shape == (2,)
    assert dset.meta.config["iterations"] == 2
    assert not out.with_name(out.name + ".ckpt").exists()


def test_eval_json_and_per_step(distilled):
    out, _ = distilled
    result = runner.invoke(app, ["eval", str(out), "--models", "3", "--per-step", "--json"])
    assert result.exit_code == 0, result.output
    payload = last_json(result.stdout)
    assert payload["eval"]["models"] == 3
    assert len(payload["per_step_mean"]) == 3  # T + 1 points


def test_show_writes_png(distilled, tmp_path):
    out, _ = distilled
    png = tmp_path / "grid.png"
    result = runner.invoke(app, ["show", str(out), "--png", str(png), "--json"])
    assert result.exit_code == 0, result.output
    assert png.stat().st_size > 0
    assert last_json(result.stdout)["steps"] == 2


def test_fixed_init_runs_and_evaluates_on_its_init(tmp_path):
    out = tmp_path / "fixed.safetensors"
    result = runner.invoke(app, ["distill", *TINY, "--init", "fixed", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert last_json(result.stdout)["eval"]["models"] == 1
    again = runner.invoke(app, ["eval", str(out), "--json"])
    assert last_json(again.stdout)["eval"]["acc_mean"] == pytest.approx(last_json(result.stdout)["eval"]["acc_mean"])


def test_learned_momentum_is_exported_shown_and_replayed(tmp_path):
    out = tmp_path / "momentum.safetensors"
    result = runner.invoke(app, ["distill", *TINY, "--init", "fixed", "--momentum", "0.5", "--lr-momenta", "0.1",
                                 "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    dset = load_distilled(out)
    assert dset.momenta.shape == (2,) and dset.momenta[0] == pytest.approx(0.5)  # μ_0 meets v_0 = 0: never moves
    assert dset.momenta[1] != pytest.approx(0.5)
    shown = runner.invoke(app, ["show", str(out), "--png", str(tmp_path / "g.png"), "--json"])
    assert last_json(shown.stdout)["momenta"] == pytest.approx(dset.momenta.tolist())
    again = runner.invoke(app, ["eval", str(out), "--json"])  # the fixed init: the same model, the same steps
    assert again.exit_code == 0, again.output
    assert last_json(again.stdout)["eval"]["acc_mean"] == pytest.approx(last_json(result.stdout)["eval"]["acc_mean"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["distill", "--dataset", "imagenet21k"], "unknown dataset"),
        (["distill", "--model", "resnet9000"], "unknown model"),
        (["distill", "--ipc", "0"], "--ipc must be at least 1"),
        (["distill", "--init", "lucky"], "--init must be one of"),
        (["distill", "--init", "pretrained"], "--weights"),
        (["distill", "--device", "tpu"], "--device"),
        (["distill", "--eval-every", "-5"], "--eval-every must be 0 (never) or positive"),
        (["distill", "--momentum", "1"], "--momentum must lie in [0, 1)"),
        (["distill", "--method", "dc", "--momentum", "0.5"], "--momentum"),
        (["distill", "--theta-every", "often"], "--theta-every must be auto or a whole number"),
        (["distill", "--mode", "autograd", "--theta-every", "2"], "--theta-every applies to --mode hvp only"),
        (["poison", "--theta-every", "-1"], "--theta-every must be auto or a whole number"),
        (["distill", "--compile", "bogus"], "--compile must be one of auto, on, off, got 'bogus'"),
        (["poison", "--compile", "bogus"], "--compile must be one of auto, on, off, got 'bogus'"),
        (["adapt", "--src", "mnist", "--tgt", "usps", "--compile", "bogus"], "--compile must be one of auto, on, off, got 'bogus'"),
        (["distill", "--mode", "autograd", "--compile", "on"], "--compile on applies to --mode hvp only"),
        (["distill", "--method", "dm", "--compile", "on"], "--compile applies to --method dd"),
    ],
)
def test_user_errors_are_one_line_exit_1(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


def test_missing_dataset_folder_names_it(tmp_path):
    result = runner.invoke(app, ["distill", "--dataset", "mnist", "--data-dir", str(tmp_path), "--quiet"])
    assert result.exit_code == 1
    assert str(tmp_path) in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("command", ["eval", "show"])
def test_corrupt_and_foreign_files(tmp_path, command):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    result = runner.invoke(app, [command, str(bad)])
    assert result.exit_code == 1 and "bad.safetensors" in result.stderr
    missing = runner.invoke(app, [command, str(tmp_path / "nope.safetensors")])
    assert missing.exit_code == 1 and "nope.safetensors" in missing.stderr


def test_unfinished_run_is_not_overwritten(tmp_path):
    out = tmp_path / "set.safetensors"
    ckpt = tmp_path / "set.safetensors.ckpt"
    ckpt.write_bytes(b"partial")
    result = runner.invoke(app, ["distill", *TINY, "--out", str(out)])
    assert result.exit_code == 1 and "--resume" in result.stderr
    assert ckpt.read_bytes() == b"partial"


def test_eval_with_baselines_adds_them_to_the_json(distilled):
    out, _ = distilled
    result = runner.invoke(app, ["eval", str(out), "--models", "2", "--baseline", "random", "--baseline", "knn",
                                 "--grid-models", "1", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    payload = last_json(result.stdout)
    assert payload["output"] == str(out) and payload["eval"]["models"] == 2
    assert set(payload["baselines"]) == {"random", "knn"}
    random_real = payload["baselines"]["random"]
    assert {"acc_mean", "acc_std", "acc_before_mean", "models", "lr", "epochs"} <= set(random_real)
    assert random_real["models"] == 2 and random_real["acc_mean"] > random_real["acc_before_mean"] + 0.05, random_real
    assert f"lr={random_real['lr']},epochs={random_real['epochs']}" in random_real["grid"]
    assert payload["baselines"]["knn"]["lr"] is None


def test_unknown_baseline_is_one_line_exit_1(distilled):
    out, _ = distilled
    result = runner.invoke(app, ["eval", str(out), "--baseline", "best"])
    assert result.exit_code == 1
    assert "unknown baseline 'best'" in result.stderr and "random, optimized, kmeans, average, knn" in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.realdata
def test_distill_and_eval_on_real_mnist(data_root, tmp_path):
    out = tmp_path / "mnist.safetensors"
    # the paper's plain SGD, not the MNIST recipe's learned momentum, which needs more than 2 iterations
    result = runner.invoke(app, ["distill", *TINY, "--distill-lr", "1.0", "--momentum", "0", "--lr-step-sizes", "0.05",
                                 "--dataset", "mnist", "--data-dir", str(data_root), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    payload = last_json(result.stdout)
    assert payload["eval"]["models"] == 2
    assert payload["eval"]["acc_mean"] > payload["eval"]["acc_before_mean"] + 0.03, payload["eval"]
    again = runner.invoke(app, ["eval", str(out), "--models", "2", "--data-dir", str(data_root), "--json"])
    assert again.exit_code == 0, again.output
    assert last_json(again.stdout)["eval"]["models"] == 2


def test_sigterm_checkpoints_and_resumes(tmp_path):
    """A killed run (SIGTERM) leaves a checkpoint and exits 130, like Ctrl-C."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed.safetensors"
    args = [sys.executable, "-m", "ddsec", "distill", "--model", "test_cnn", "--steps", "1", "--epochs", "1",
            "--iterations", "3000", "--n-models", "1", "--batch-size", "16", "--eval-every", "100000",
            "--out", str(out)]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while "distilling" not in proc.stderr.readline():  # plain progress lines: the loop is running
        assert time.monotonic() < deadline and proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert "--resume" in proc.stderr.read()
    assert (tmp_path / "killed.safetensors.ckpt").exists() and not out.exists()


@pytest.mark.slow
def test_sigkill_loses_at_most_the_checkpoint_interval_and_resume_says_where(tmp_path):
    """A run killed with SIGKILL (no handler runs) keeps a checkpoint written by time, long before
    its first by-iteration checkpoint (every 100 iterations); --resume says where it resumes and
    finishes with a valid file."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from ddsec.engine import load_checkpoint

    out, interval = tmp_path / "killed.safetensors", 4.0
    ckpt = out.with_name(out.name + ".ckpt")
    args = [sys.executable, "-m", "ddsec", "distill", "--n-models", "4", "--eval-every", "0", "--eval-models", "2",
            "--quiet", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*args, "--iterations", "100000", "--checkpoint-seconds", str(interval)],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not ckpt.exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else "no checkpoint"
        time.sleep(0.2)
    time.sleep(3 * interval)
    proc.send_signal(signal.SIGKILL)
    killed_at = time.time()
    proc.wait(timeout=30)
    lost = killed_at - ckpt.stat().st_mtime
    done = load_checkpoint(ckpt).iteration
    assert 0 < done < 100 and lost <= interval + 5, (done, lost)  # the interval plus at most one iteration
    resumed = subprocess.run([*args, "--iterations", str(done + 2), "--resume"], stderr=subprocess.PIPE, text=True,
                             env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from iteration {done} of {done + 2}" in resumed.stderr
    assert load_distilled(out).lrs.shape == (30,) and not ckpt.exists()


def test_a_compile_fallback_is_one_note_line(capsys, monkeypatch):
    import warnings

    import ddsec.cli
    from ddsec.cli import _note_fallback
    from ddsec.engine import CompileFallback

    passed_on = []
    monkeypatch.setattr(ddsec.cli, "_python_showwarning", lambda *args: passed_on.append(args[:4]))

    _note_fallback(CompileFallback("compile failed for LeNet (a graph break); running eager"), CompileFallback,
                   "metagrad.py", 1)
    said = capsys.readouterr().err.strip().splitlines()
    assert said == ["note: compile failed for LeNet (a graph break); running eager"]
    _note_fallback(UserWarning("other"), UserWarning, "x.py", 3)  # other warnings: as Python prints them
    assert len(passed_on) == 1 and passed_on[0][1:] == (UserWarning, "x.py", 3)
    assert warnings.showwarning is not _note_fallback  # installed by main() only, not on import
