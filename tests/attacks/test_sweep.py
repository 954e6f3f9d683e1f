"""The sweep over class pairs: parsing ``--pairs``, resuming pair by pair, recording failed pairs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import ddsec.attacks.sweep as sweep
from ddsec.attacks import PoisonConfig, parse_pairs, prepare_sweep, run_sweep
from ddsec.cli import app
from ddsec.errors import DDSecError, NonFiniteError
from ddsec.export import load_distilled

runner = CliRunner()


@pytest.fixture
def zoo(digits_mlp_zoo):
    return digits_mlp_zoo


def tiny(zoo) -> list[str]:
    return ["poison", "--zoo", str(zoo), "--model", "mlp", "--iterations", "4", "--n-models", "2", "--eval-models", "2",
            "--batch-size", "64", "--quiet"]


def test_pairs_are_all_ordered_pairs_or_a_list():
    assert parse_pairs("all", 3, "x") == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    assert parse_pairs("3:8, 1:7", 10, "x") == [(3, 8), (1, 7)]


@pytest.mark.parametrize("args, message", [
    (["--pairs", "3-8"], "--pairs: '3-8' is not K:T; give all or a list such as 3:8,1:7"),
    (["--pairs", "3:"], "--pairs: '3:' is not K:T"),
    (["--pairs", "3:8,,1:7"], "--pairs: '' is not K:T"),
    (["--pairs", "3:3"], "--pairs 3:3: the attacked and the target class must differ"),
    (["--pairs", "3:12"], "--pairs 3:12: class 12 is out of range: digits has classes 0 … 9"),
    (["--pairs", "3:8,3:8"], "--pairs lists 3:8 twice"),
    (["--pairs", "all", "--attack", "2"], "--pairs sets the classes of every attack"),
    (["--max-collateral", "0.05", "--attack-weight", "3"], "pass either --max-collateral C"),
    (["--max-collateral", "lots"], "--max-collateral must be a fraction such as 0.03 (3 points) or none, got 'lots'"),
    (["--max-collateral", "0"], "--max-collateral must be a fraction in (0, 1)"),
])
def test_pair_and_objective_errors_are_one_line(zoo, args, message):
    result = runner.invoke(app, [*tiny(zoo), *args])
    assert result.exit_code == 1, result.output
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.output


def test_an_interrupted_sweep_resumes_without_redoing_finished_pairs(zoo, tmp_path, monkeypatch):
    out = tmp_path / "s.safetensors"
    run = [*tiny(zoo), "--pairs", "3:8,1:7,0:5", "--out", str(out)]
    real, calls = sweep.run_poison, []

    def counted(job, **kwargs):
        calls.append((job.cfg.attack, job.cfg.target))
        if len(calls) == 2:  # Ctrl-C in the second pair, after its second outer iteration
            def interrupt(progress, _):
                if progress.iteration == 2:
                    raise KeyboardInterrupt
            kwargs["on_progress"] = interrupt
        return real(job, **kwargs)

    monkeypatch.setattr(sweep, "run_poison", counted)
    assert runner.invoke(app, run).exit_code == 130
    state = json.loads(out.with_suffix(".json").read_text())
    assert list(state["pairs"]) == ["3:8"] and not state["finished"]
    assert (tmp_path / "s-1-7.safetensors.ckpt").exists()
    refused = runner.invoke(app, run)
    assert refused.exit_code == 1 and "an unfinished sweep left" in refused.stderr
    changed = runner.invoke(app, [*run, "--resume", "--lr", "0.1"])
    assert changed.exit_code == 1 and "other settings (lr)" in changed.stderr, changed.stderr
    result = runner.invoke(app, [*run, "--resume", "--json"])
    assert result.exit_code == 0, result.output
    assert calls == [(3, 8), (1, 7), (1, 7), (0, 5)]  # 3:8 was not redone
    assert "resuming from iteration 2 of 4" in result.stderr
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(payload["pairs"]) == {"3:8", "1:7", "0:5"}
    record = payload["pairs"]["0:5"]
    assert record["status"] == "done" and record["crafting"]["max_collateral"] == 0.03
    assert set(record["eval"]) >= {"asr_mean", "asr_std", "asr_worst_decile"}
    assert load_distilled(record["output"]).meta.attack_class == 0 and not list(tmp_path.glob("*.ckpt"))
    assert json.loads(out.with_suffix(".json").read_text())["finished"]
    for png in ("s-success.png", "s-collateral.png"):
        assert (tmp_path / png).stat().st_size > 0


def test_a_failing_pair_is_recorded_and_the_sweep_goes_on(zoo, tmp_path, monkeypatch):
    cfg = PoisonConfig(model="mlp", zoo=str(zoo), n_models=2, iterations=3, batch_size=64, eval_models=2, device="cpu")
    job, pairs = prepare_sweep(cfg, "1:7,3:8")
    real = sweep.run_poison

    def failing(job, **kwargs):
        if job.cfg.attack == 1:
            raise NonFiniteError("the outer loss or its gradient became NaN/inf at iteration 2")
        return real(job, **kwargs)

    monkeypatch.setattr(sweep, "run_poison", failing)
    result = run_sweep(job, pairs, tmp_path / "f.safetensors")
    assert result.records["1:7"] == {"attack": 1, "target": 7, "status": "failed",
                                     "error": "the outer loss or its gradient became NaN/inf at iteration 2"}
    assert result.records["3:8"]["status"] == "done" and (tmp_path / "f-3-8.safetensors").exists()
    assert (tmp_path / "f-success.png").exists() and not (tmp_path / "f-1-7.safetensors").exists()
    with pytest.raises(DDSecError, match="no sweep .* to resume"):
        run_sweep(job, pairs, tmp_path / "g.safetensors", resume=True)
