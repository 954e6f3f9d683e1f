"""The shared outer loop: exact resume after an interrupt inside a step, the NaN stop, the one
checkpoint format (an older one is refused in one line), and a time budget's plan."""

from __future__ import annotations

import pytest
import torch

from ddsec.engine import StepOutcome, load_checkpoint, run_loop
from ddsec.engine.checkpoint import save_checkpoint
from ddsec.errors import DDSecError, FormatError, NonFiniteError


class RandomWalk:
    """A method whose state is a random walk of the generator's draws: resumes are exact only if
    the loop restores both the state and the generator where an unfinished iteration began."""

    def __init__(self, interrupt_at: int | None = None, nan_at: int | None = None) -> None:
        self.position = torch.zeros(3, dtype=torch.float64)
        self.interrupt_at, self.nan_at = interrupt_at, nan_at

    def step(self, iteration: int, generator: torch.Generator) -> StepOutcome:
        move = torch.randn(3, generator=generator, dtype=torch.float64)
        if iteration == self.interrupt_at:
            raise KeyboardInterrupt  # after drawing: a mid-iteration Ctrl-C
        if iteration == self.nan_at:
            raise NonFiniteError("the walk became NaN at iteration {iteration}{where}; start over with --force")
        self.position = self.position + move
        return StepOutcome(float(self.position.sum()))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.position = state["position"].clone()

    def use_plan(self, plan: dict) -> None:
        pass


def test_an_interrupt_inside_a_step_resumes_to_the_uninterrupted_run(tmp_path):
    whole = RandomWalk()
    whole_losses = run_loop(whole, iterations=6, seed=5, fingerprint={}).losses
    path = tmp_path / "walk.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run_loop(RandomWalk(interrupt_at=3), iterations=6, seed=5, fingerprint={}, checkpoint_path=path)
    assert load_checkpoint(path).iteration == 3
    resumed = RandomWalk()
    result = run_loop(resumed, iterations=6, seed=5, fingerprint={}, checkpoint_path=path, resume=True)
    assert result.resumed_from == 3
    assert torch.equal(resumed.position, whole.position) and torch.equal(result.losses, whole_losses)


def test_a_nan_stop_names_the_iteration_and_the_saved_state(tmp_path):
    path = tmp_path / "walk.ckpt"
    with pytest.raises(NonFiniteError, match=rf"at iteration 3; the last good state is saved in {path}; start over"):
        run_loop(RandomWalk(nan_at=2), iterations=6, seed=0, fingerprint={}, checkpoint_path=path)
    assert load_checkpoint(path).iteration == 2


def test_resume_refuses_other_settings_and_a_missing_checkpoint(tmp_path):
    path = tmp_path / "walk.ckpt"
    run_loop(RandomWalk(), iterations=2, seed=0, fingerprint={"lr": 1}, checkpoint_path=path)
    with pytest.raises(DDSecError, match=r"other settings \(lr\)"):
        run_loop(RandomWalk(), iterations=4, seed=0, fingerprint={"lr": 2}, checkpoint_path=path, resume=True)
    with pytest.raises(DDSecError, match="there is no checkpoint"):
        run_loop(RandomWalk(), iterations=4, seed=0, fingerprint={}, checkpoint_path=tmp_path / "none", resume=True)


def test_a_checkpoint_of_the_older_format_is_refused_in_one_line(tmp_path):
    path = tmp_path / "old.ckpt"
    from safetensors.torch import save_file

    save_file({"images": torch.zeros(1)}, str(path), metadata={"format": "ddsec.checkpoint/1"})
    with pytest.raises(FormatError, match="older ddsec .*start over with --force"):
        load_checkpoint(path)


def test_a_method_may_not_shadow_the_loops_own_tensors(tmp_path):
    from ddsec.engine import LoopState

    with pytest.raises(ValueError, match="losses"):
        save_checkpoint(tmp_path / "x", LoopState({"losses": torch.zeros(1)}, torch.Generator().get_state(), 0,
                                                   torch.zeros(0), {}))


def test_a_time_budget_plan_is_made_once_and_kept(tmp_path):
    calls = []

    def replan(seconds: float) -> tuple[int, int | None]:
        calls.append(seconds)
        return 7, 3

    result = run_loop(RandomWalk(), iterations=None, seed=0, fingerprint={}, replan=replan, probe=2)
    assert len(calls) == 1 and result.plan["iterations"] == 7 and result.plan["decay_every"] == 3
    assert result.losses.shape == (7,)
