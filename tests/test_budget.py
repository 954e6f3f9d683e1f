"""Time budgets: durations parse (or fail in one line), a budgeted run fills its budget, an explicit
--iterations wins, and a resumed run keeps the iteration count chosen at its first start."""

from __future__ import annotations

import json
import time

import pytest
import torch
from typer.testing import CliRunner

from ddsec.budget import parse_duration, planner
from ddsec.cli import app
from ddsec.engine import ClassificationObjective, RandomInit, RealBatches, SyntheticSet, distill, load_checkpoint
from ddsec.errors import DDSecError
from ddsec.export import load_distilled
from ddsec.models_zoo import create_model

runner = CliRunner()


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("45", 45),
                                           ("0.5m", 30)])
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "-5m", "0s", "5m3"])
def test_bad_durations_are_one_line(text):
    with pytest.raises(DDSecError, match="--budget must be"):
        parse_duration(text)


def test_planner_fills_the_budget_and_places_the_decay_by_fraction():
    assert planner("60s", 0.35)(0.5) == (120, 42)
    assert planner("60s", None, decay_every=7)(2.0) == (30, 7)


def tiny_objective() -> ClassificationObjective:
    model = create_model("test_cnn", num_classes=3, in_chans=1, image_size=6, seed=0).eval()
    x = torch.randn(60, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    return ClassificationObjective(model, RandomInit(model), RealBatches(x, torch.arange(60) % 3, 16))


def start() -> SyntheticSet:
    return SyntheticSet.create(num_classes=3, ipc=1, steps=2, epochs=1, image_shape=(1, 6, 6), init_lr=0.1,
                               generator=torch.Generator().manual_seed(1))


def slow(progress) -> None:
    time.sleep(0.05)  # iterations of ~50 ms, so that timing noise is small against them


def test_a_budgeted_run_fills_its_budget_within_20_percent():
    began = time.perf_counter()
    result = distill(tiny_objective(), start(), iterations=None, replan=planner("2s", 0.5), on_progress=slow)
    elapsed = time.perf_counter() - began
    assert 0.8 * 2.0 <= elapsed <= 1.2 * 2.0, (elapsed, result.plan)
    assert result.losses.shape == (result.plan["iterations"],)
    assert result.plan["decay_every"] == round(0.5 * result.plan["iterations"])


class CostlyDual:
    """A dual player that spends 0.3 s every 5 iterations, like a collateral check."""

    period = 5

    def __init__(self) -> None:
        self.state = {"updated_at": torch.zeros((), dtype=torch.int64)}

    def update(self, iteration: int, synthetic: SyntheticSet) -> None:
        if iteration % self.period == 0 and iteration != int(self.state["updated_at"]):
            time.sleep(0.3)
            self.state["updated_at"].fill_(iteration)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state["updated_at"].copy_(state["updated_at"])


def test_a_budget_counts_the_cost_of_a_dual_players_updates():
    """Timed over 3 iterations only, the plan would miss the 0.3 s every 5 and overrun by half."""
    began = time.perf_counter()
    result = distill(tiny_objective(), start(), iterations=None, replan=planner("3s", None), on_progress=slow,
                     dual=CostlyDual())
    elapsed = time.perf_counter() - began
    assert 0.8 * 3.0 <= elapsed <= 1.2 * 3.0, (elapsed, result.plan)


def test_resume_keeps_the_iteration_count_of_the_first_start(tmp_path):
    ckpt = tmp_path / "run.ckpt"

    def interrupt(progress) -> None:
        slow(progress)
        if progress.iteration == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(tiny_objective(), start(), iterations=None, replan=planner("2s", None), checkpoint_path=ckpt,
                on_progress=interrupt)
    chosen = load_checkpoint(ckpt).plan["iterations"]
    resumed = distill(tiny_objective(), start(), iterations=None, replan=planner("1h", None), checkpoint_path=ckpt,
                      resume=True)  # a resume with no sleep would plan far more in an hour: it must not replan
    assert resumed.plan["iterations"] == chosen and resumed.losses.shape == (chosen,)


def test_cli_budget_goes_into_the_metadata_and_iterations_win(tmp_path):
    common = ["distill", "--model", "test_cnn", "--steps", "1", "--epochs", "1", "--n-models", "1", "--batch-size", "16",
              "--eval-models", "1", "--quiet", "--json"]
    out = tmp_path / "b.safetensors"
    result = runner.invoke(app, [*common, "--budget", "3s", "--decay-fraction", "0.5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    config = load_distilled(out).meta.config
    assert config["budget"] == "3s" and config["iterations"] is None
    assert config["plan"]["iterations"] == payload["iterations"] > 3 and config["plan"]["seconds_per_iteration"] > 0
    both = runner.invoke(app, [*common, "--budget", "1h", "--iterations", "2", "--out", str(tmp_path / "i.safetensors")])
    assert both.exit_code == 0, both.output
    assert "--iterations 2 wins over --budget 1h" in both.stderr
    assert json.loads(both.stdout.strip().splitlines()[-1])["iterations"] == 2
    bad = runner.invoke(app, [*common, "--budget", "soon", "--out", str(tmp_path / "x.safetensors")])
    assert bad.exit_code == 1 and bad.stderr.strip().endswith("got 'soon'")


def _sleepy_condense_step(state, generator, iteration):
    """A condensation step that takes 0.05 s and nudges the images."""
    from ddsec.condense.loop import ImageState

    time.sleep(0.05)
    return ImageState(state.images * 0.99, state.momentum), float(iteration)


def test_condense_fills_its_budget_and_a_resume_keeps_the_plan(tmp_path):
    from ddsec.condense.loop import condense

    images = torch.zeros(4, 1, 3, 3)
    began = time.perf_counter()
    result = condense(_sleepy_condense_step, images, iterations=None, replan=planner("1s", None), seed=0, fingerprint={})
    elapsed = time.perf_counter() - began
    assert 0.8 <= elapsed <= 1.2, (elapsed, result.plan)
    assert result.losses.shape == (result.plan["iterations"],)
    ckpt = tmp_path / "c.ckpt"

    def interrupt(progress) -> None:
        if progress.iteration == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        condense(_sleepy_condense_step, images, iterations=None, replan=planner("1s", None), seed=0, fingerprint={},
                 checkpoint_path=ckpt, on_progress=interrupt)
    chosen = load_checkpoint(ckpt).plan["iterations"]
    resumed = condense(_sleepy_condense_step, images, iterations=None, replan=planner("1h", None), seed=0,
                       fingerprint={}, checkpoint_path=ckpt, resume=True)
    assert resumed.plan["iterations"] == chosen and resumed.losses.shape == (chosen,)


def test_condense_cli_plans_its_budget_into_the_metadata(tmp_path):
    out = tmp_path / "dm.safetensors"
    result = runner.invoke(app, ["distill", "--method", "dm", "--model", "test_cnn", "--ipc", "1", "--budget", "2s",
                                 "--eval-models", "1", "--eval-epochs", "2", "--batch-size", "16", "--quiet", "--json",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = load_distilled(out).meta.config
    assert config["budget"] == "2s" and config["iterations"] is None
    assert config["plan"]["iterations"] == json.loads(result.stdout.strip().splitlines()[-1])["iterations"] > 4


def test_recipes_fill_what_was_not_given_and_say_so():
    from ddsec.cli.options import with_recipe

    poison = dict(iterations=None, budget=None, decay_fraction=None, check_every=None)
    settings, notes = with_recipe("poison", "mnist", poison, 200)
    assert settings == {"iterations": None, "budget": "10m", "check_every": 40}
    assert len(notes) == 1 and notes[0].startswith("recipe for mnist: budget=10m, check_every=40 (RESULTS")
    settings, notes = with_recipe("poison", "mnist", poison | {"check_every": 10}, 200)
    assert settings["check_every"] == 10 and "check_every" not in notes[0]
    given = dict(iterations=None, budget="90s", lr=None, momentum=0.0, keep_graphs=None, decay_fraction=None,
                 lr_step_sizes=None, lr_momenta=None)
    settings, notes = with_recipe("distill", "mnist", given, 40)
    assert settings["budget"] == "90s" and settings["momentum"] == 0.0 and settings["lr"] == 0.05
    assert "budget=" not in notes[0] and "momentum=" not in notes[0]
    settings, notes = with_recipe("poison", "digits", poison, 200)
    assert settings == {"iterations": 200, "budget": None, "check_every": 10}
    assert notes[0].startswith("recipe for digits: check_every=10 (RESULTS")
    settings, notes = with_recipe("poison", "usps", poison, 200)
    assert settings == {"iterations": 200, "budget": None} and notes == []  # no recipe: the config's defaults
    settings, notes = with_recipe("adapt", "mnist:usps", dict(iterations=None, budget=None, decay_fraction=None), 40)
    assert settings == {"iterations": None, "budget": "10m", "decay_fraction": 0.5}
    assert notes[0].startswith("recipe for mnist:usps: budget=10m, decay_fraction=0.5 (RESULTS")
    settings, _ = with_recipe("adapt", "usps:mnist", dict(iterations=None, budget=None, decay_fraction=None), 40)
    assert settings == {"iterations": 40, "budget": None}
