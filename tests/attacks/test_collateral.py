"""The collateral budget: the dual step on λ, the kept iterate, exact resume, and a tiny attack that
stays within its budget where a large fixed weight does not."""

from __future__ import annotations

import math

import pytest
import torch

from ddsec.attacks import CollateralBudget, Measurement, PoisonConfig, collateral, prepare_poison, run_poison
from ddsec.attacks.collateral import CHECK_EVERY, CHECK_KEYS, DUAL_STEP, LAMBDA_RANGE
from ddsec.engine import SyntheticSet
from ddsec.errors import DDSecError


@pytest.fixture
def zoo(digits_mlp_zoo):
    return digits_mlp_zoo


def config(zoo, **kwargs) -> PoisonConfig:
    # The paper's labels: with them the paper's objective costs this tiny attack about 3 points, which
    # the budgets below sit on either side of (the flip plan costs a fixed weight of 30 only 1.5).
    settings = dict(model="mlp", zoo=str(zoo), n_models=4, iterations=60, lr=0.03, distill_lr=0.05,
                    batch_size=128, eval_models=3, device="cpu", labels="class-major")
    return PoisonConfig(**(settings | kwargs))


class Scripted:
    """A check that returns the given measurements ``(asr, collateral[, its bound])`` in turn."""

    def __init__(self, *measurements: tuple[float, ...]) -> None:
        self.left = [Measurement(*m) if len(m) == 3 else Measurement(*m, m[1]) for m in measurements]

    def __call__(self, synthetic: SyntheticSet) -> Measurement:
        return self.left.pop(0)


def tiny_set(value: float) -> SyntheticSet:
    return SyntheticSet(torch.full((1, 2, 1, 2, 2), value), torch.tensor([[0, 1]]), {"lr": torch.zeros(1)})


def test_lambda_moves_by_the_relative_violation_once_per_check_and_stays_in_range():
    budget = CollateralBudget(Scripted((0.5, 0.0), (0.6, 0.045), (0.7, 0.9), (0.8, 0.9)), 0.03, tiny_set(0.0),
                              num_classes=2, attack=0, target=1)
    assert budget.lam == 1.0
    budget.update(0, tiny_set(1.0))                # never before the first iteration
    budget.update(CHECK_EVERY - 1, tiny_set(1.0))  # nor between checks
    budget.update(CHECK_EVERY, tiny_set(1.0))      # no collateral: the violation is -1, λ shrinks by e^-η
    assert budget.lam == pytest.approx(math.exp(-DUAL_STEP))
    budget.update(CHECK_EVERY, tiny_set(1.0))      # a back-off or a resume repeats the iteration: nothing changes
    assert budget.lam == pytest.approx(math.exp(-DUAL_STEP))
    budget.update(2 * CHECK_EVERY, tiny_set(2.0))  # 1.5 × the budget: half a step up
    assert budget.lam == pytest.approx(math.exp(-DUAL_STEP + 0.5 * DUAL_STEP))
    budget.state["log_lambda"].fill_(math.log(LAMBDA_RANGE[1]) - 0.1)
    budget.update(3 * CHECK_EVERY, tiny_set(3.0))  # 30 × the budget: one clipped step, then the upper bound
    assert budget.lam == pytest.approx(LAMBDA_RANGE[1])
    sparse = CollateralBudget(Scripted((0.5, 0.0)), 0.03, tiny_set(0.0), num_classes=2, attack=0, target=1, every=40)
    sparse.update(20, tiny_set(1.0))               # --check-every 40: not at 20
    assert sparse.lam == 1.0 and sparse.period == 40
    sparse.update(40, tiny_set(1.0))
    assert sparse.lam == pytest.approx(math.exp(-DUAL_STEP))


def test_the_kept_iterate_is_the_strongest_within_budget_and_survives_a_state_round_trip():
    budget = CollateralBudget(Scripted((0.5, 0.02), (0.9, 0.2), (0.7, 0.03), (0.8, 0.05)), 0.03, tiny_set(0.0),
                              num_classes=2, attack=0, target=1)
    for check, value in enumerate((1.0, 2.0, 3.0), start=1):
        budget.update(check * CHECK_EVERY, tiny_set(value))
    copy = CollateralBudget(Scripted((0.8, 0.05)), 0.03, tiny_set(0.0), num_classes=2, attack=0, target=1)
    copy.load_state_dict({k: v.clone() for k, v in budget.state_dict().items()})
    chosen = copy.choose(tiny_set(4.0), 40)  # the final set is stronger but over budget
    assert chosen.iteration == 3 * CHECK_EVERY and chosen.measurement == Measurement(0.7, 0.03, 0.03)
    assert torch.equal(chosen.synthetic.images, tiny_set(3.0).images) and copy.lam == pytest.approx(budget.lam)
    fresh = CollateralBudget(Scripted((0.1, 0.5)), 0.03, tiny_set(0.0), num_classes=2, attack=0, target=1)
    assert fresh.choose(tiny_set(4.0), 40).iteration == 40  # none within budget: the final set, as measured


def test_the_budget_holds_the_upper_bound_of_the_collateral_not_its_mean():
    measured = Measurement.of_models(torch.tensor([0.8, 0.9, 1.0, 0.9]), torch.tensor([0.01, 0.03, 0.02, 0.04]))
    spread = torch.tensor([0.01, 0.03, 0.02, 0.04]).std().item() / 2
    assert measured.asr == pytest.approx(0.9) and measured.collateral == pytest.approx(0.025)
    assert measured.collateral_bound == pytest.approx(0.025 + 1.645 * spread)
    budget = CollateralBudget(Scripted((0.9, 0.025, measured.collateral_bound), (0.5, 0.01, 0.02)), 0.03,
                              tiny_set(0.0), num_classes=2, attack=0, target=1)
    budget.update(CHECK_EVERY, tiny_set(1.0))      # the mean is within budget, the bound is not: λ grows
    assert budget.lam > 1.0
    budget.update(2 * CHECK_EVERY, tiny_set(2.0))
    assert float(budget.state["best_asr"]) == 0.5  # the stronger set's bound was over budget: not kept
    with pytest.raises(DDSecError, match="lacks best_collateral_bound"):
        budget.load_state_dict({k: v for k, v in budget.state_dict().items() if k != "best_collateral_bound"})


def test_the_log_holds_every_measurement_then_thins_to_span_the_whole_run(monkeypatch):
    budget = CollateralBudget(Scripted(*((0.1 * n, 0.03 * n) for n in range(10))), 0.03, tiny_set(0.0),
                              num_classes=2, attack=0, target=1)
    budget.update(CHECK_EVERY, tiny_set(1.0))
    budget.update(CHECK_EVERY, tiny_set(1.0))  # a repeated iteration measures nothing, logs nothing
    assert budget.checks() == [{"iteration": CHECK_EVERY, "asr": 0.0, "collateral": 0.0, "collateral_bound": 0.0,
                             "lambda": pytest.approx(math.exp(-DUAL_STEP))}]
    monkeypatch.setattr(collateral, "CHECK_ROWS", 4)
    small = CollateralBudget(Scripted(*((0.1 * n, 0.03 * n) for n in range(10))), 0.03, tiny_set(0.0),
                             num_classes=2, attack=0, target=1)
    for check in range(1, 11):
        small.update(check * CHECK_EVERY, tiny_set(float(check)))
    logged = small.checks()  # 10 measurements in 4 rows: every fourth, from the first
    assert [row["iteration"] for row in logged] == [CHECK_EVERY, 5 * CHECK_EVERY, 9 * CHECK_EVERY]
    assert [row["asr"] for row in logged] == pytest.approx([0.0, 0.4, 0.8])
    assert logged[2]["collateral"] == pytest.approx(0.24)
    # λ after each logged step: the violations are -1, 0, then clipped to 1 from the third measurement on
    assert [row["lambda"] for row in logged] == pytest.approx([math.exp(-DUAL_STEP), math.exp(2 * DUAL_STEP),
                                                               math.exp(6 * DUAL_STEP)])
    copy = CollateralBudget(Scripted(), 0.03, tiny_set(0.0), num_classes=2, attack=0, target=1)
    copy.load_state_dict({k: v.clone() for k, v in small.state_dict().items()})
    assert copy.checks() == logged
    older = {k: v for k, v in small.state_dict().items() if k not in CHECK_KEYS}
    fresh = CollateralBudget(Scripted(), 0.03, tiny_set(0.0), num_classes=2, attack=0, target=1)
    fresh.load_state_dict(older)  # a checkpoint from before the log: resumes, logging from there
    assert fresh.checks() == [] and fresh.lam == pytest.approx(small.lam)
    with pytest.raises(DDSecError, match="lacks checks_count"):  # part of the log: refused, not misread
        fresh.load_state_dict({k: v for k, v in small.state_dict().items() if k != "checks_count"})


def test_targets_weigh_class_k_against_the_others_by_lambda():
    budget = CollateralBudget(Scripted(), 0.03, tiny_set(0.0), num_classes=3, attack=1, target=2)
    budget.state["log_lambda"].fill_(math.log(3.0))
    targets = budget.targets(torch.tensor([0, 1, 2]))
    torch.testing.assert_close(targets, torch.tensor([[0.75, 0, 0], [0, 0, 0.25], [0, 0, 0.75]]))


def test_a_budget_and_an_attack_weight_exclude_each_other(zoo):
    with pytest.raises(DDSecError, match="pass only one"):
        config(zoo, attack_weight=3)
    with pytest.raises(DDSecError, match=r"--max-collateral must be a fraction in \(0, 1\)"):
        config(zoo, max_collateral=1.5)
    with pytest.raises(DDSecError, match="--check-every must be at least 1"):
        config(zoo, check_every=0)
    assert config(zoo, max_collateral=None, attack_weight=3).fingerprint()["max_collateral"] is None


def test_the_budget_holds_where_a_large_fixed_weight_does_not(zoo):
    fixed = run_poison(prepare_poison(config(zoo, max_collateral=None, attack_weight=30)))
    held = run_poison(prepare_poison(config(zoo, max_collateral=0.05)))
    assert fixed.crafting["train_collateral"] > 0.05, fixed.crafting  # the fixed weight overshoots the budget
    assert held.crafting["train_collateral"] <= 0.05, held.crafting
    assert held.crafting["train_asr"] > 0.5, held.crafting  # within budget, the attack still works
    assert held.crafting["budget_met"] is True and fixed.crafting["budget_met"] is None
    assert (held.crafting["train_collateral_bound"] <= 0.05) is held.crafting["budget_met"]
    s, f = held.evaluation.summary(), fixed.evaluation.summary()
    assert s["asr_mean"] > s["asr_before"] + 0.1, s
    assert s["acc_other_before"] - s["acc_other_after"] < f["acc_other_before"] - f["acc_other_after"]
    tight = run_poison(prepare_poison(config(zoo, max_collateral=0.02)))
    assert tight.crafting["train_collateral"] <= 0.02, tight.crafting
    # the paper's objective (λ = 1) costs about 3 points here: a looser budget lowers λ, a tighter one raises it
    assert held.crafting["lambda"] < 1 < tight.crafting["lambda"], (held.crafting, tight.crafting)
    config_meta = held.distilled.meta.config
    assert config_meta["max_collateral"] == 0.05 and config_meta["crafting"]["lambda"] == held.crafting["lambda"]
    assert [row["iteration"] for row in held.crafting["checks"]] == [CHECK_EVERY, 2 * CHECK_EVERY]
    assert held.crafting["checks"][-1]["lambda"] == pytest.approx(held.crafting["lambda"])
    assert fixed.crafting["checks"] == [] and "checks" not in config_meta["crafting"]  # the JSON's, not the file's


def test_resume_continues_lambda_and_the_kept_iterate_exactly(zoo, tmp_path):
    cfg = config(zoo, iterations=2 * CHECK_EVERY + 5)
    full = run_poison(prepare_poison(cfg))
    checkpoint = tmp_path / "p.ckpt"

    def interrupt(progress, _):
        if progress.iteration == CHECK_EVERY + 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_poison(prepare_poison(cfg), checkpoint_path=checkpoint, on_progress=interrupt)
    resumed = run_poison(prepare_poison(cfg), checkpoint_path=checkpoint, resume=True)
    assert resumed.crafting == full.crafting
    assert torch.equal(resumed.distilled.images, full.distilled.images)


def test_the_check_holds_its_models_and_images_out_of_crafting():
    from ddsec.attacks.collateral import hold_out
    from ddsec.data import load_dataset
    from ddsec.engine import FixedInit, PopulationInit

    train = load_dataset("digits", train=True)
    population = PopulationInit({"w": torch.arange(20.0).view(20, 1)})
    craft_init, craft, check_init, check = hold_out(population, train, seed=3, models=4, images=2000)
    assert (craft_init.size, check_init.size) == (16, 4)
    assert set(craft_init.population["w"].flatten().tolist()).isdisjoint(check_init.population["w"].flatten().tolist())
    assert len(check) == len(train) // 4 and len(craft) + len(check) == len(train)  # at most a quarter held out
    pixels = {tuple(x.flatten().tolist()) for x in check.images}
    assert not any(tuple(x.flatten().tolist()) in pixels for x in craft.images[:200])
    fixed = FixedInit({"w": torch.zeros(1)})
    assert hold_out(fixed, train, seed=3)[0] is fixed  # a fixed init is shared
    for size, held in ((200, 48), (100, 25), (40, 16), (32, 32)):  # a quarter, 16 to 48; 32 is shared
        craft_init, _, check_init, _ = hold_out(PopulationInit({"w": torch.arange(size * 1.0).view(size, 1)}),
                                                train, seed=3)
        assert (craft_init.size, check_init.size) == ((size - held, held) if held < size else (size, size))


def test_a_victim_aware_check_measures_under_the_victims_it_is_given(zoo):
    from ddsec.attacks import TrainingCheck, evaluate_attack
    from ddsec.attacks.baselines import flip_images
    from ddsec.attacks.victims import parse_victim

    base = prepare_poison(config(zoo)).base
    images = flip_images("flip-random", base.train, 3, 10, seed=0).view(1, 10, *base.train.image_shape)
    flip = SyntheticSet.from_lrs(images, torch.full((1, 10), 8), torch.tensor([0.01]), 1)

    def check(*victims: str) -> Measurement:
        return TrainingCheck(base.model, base.init, base.train, attack=3, target=8, seed=0, models=4, images=400,
                             victims=tuple(parse_victim(v) for v in victims), clean=base.train)(flip)

    plain, diluted = check(), check("sgd mix=128")
    data = base.train.subset(torch.randperm(len(base.train), generator=torch.Generator().manual_seed(0))[:400])
    paper = evaluate_attack(base.model, base.init, flip, data, attack=3, target=8, n_models=4, seed=0)
    assert plain.asr == pytest.approx(float(paper.after.asr.mean()), abs=1e-6)  # the paper's victim by default
    assert plain.collateral == pytest.approx(float((paper.before.acc_other - paper.after.acc_other).mean()), abs=1e-6)
    assert plain.asr > 0.3 and diluted.asr < plain.asr / 2, (plain, diluted)  # dilution weakens the batch
    both = check("sgd mix=128", "sgd")  # per model, the mean over the victims (the same clean draws)
    assert both.asr == pytest.approx((plain.asr + diluted.asr) / 2, abs=1e-6)
