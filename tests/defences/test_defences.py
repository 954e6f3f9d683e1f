"""Detectors rank planted poisons first, the ROC metrics agree with their definitions, filtering
re-trains the victim on what is kept, and ``ddsec detect`` reports (or fails in one line)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from ddsec.cli import app
from ddsec.defences import ModelProbe, auroc, confusion, make_detectors, operating_point, robust_z
from ddsec.defences.detectors import DETECTOR_NAMES
from ddsec.engine import SyntheticSet
from ddsec.errors import DDSecError
from ddsec.export import save_distilled

runner = CliRunner()


def planted_probe(poison_centre: torch.Tensor) -> tuple[ModelProbe, torch.Tensor]:
    """Three Gaussian classes in 6 dimensions (as ``[N, 1, 1, 6]`` images) around ``4·e_c``, a linear
    classifier trained on them, and 4 poisons labelled 0 around ``poison_centre`` (the last 4 samples)."""
    generator = torch.Generator().manual_seed(0)
    centres = 4 * torch.eye(3, 6)
    labels = torch.arange(3).repeat_interleave(100)
    points = centres[labels] + 0.5 * torch.randn(300, 6, generator=generator)
    poison = poison_centre + 0.5 * torch.randn(4, 6, generator=generator)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(points), labels).backward()
        optimizer.step()
    images = torch.cat([points, poison]).view(-1, 1, 1, 6)
    all_labels = torch.cat([labels, torch.zeros(4, dtype=torch.long)])
    params = {k: v.detach() for k, v in model.named_parameters()}
    return ModelProbe(model, params, images, all_labels), torch.arange(304) >= 300


@pytest.fixture(scope="module")
def planted():
    """Poisons among class 1's points, labelled 0."""
    return planted_probe(4 * torch.eye(6)[1])


@pytest.mark.parametrize("name", [n for n in DETECTOR_NAMES if n != "pixels"])
def test_each_detector_ranks_planted_poisons_first(planted, name):
    probe, is_poison = planted
    (detector,) = make_detectors([name], mean=(0.0,), std=(1.0,), expected_fraction=4 / 104, k=5)  # class 0's share
    scores, flags = detector.detect(probe)
    assert scores.shape == (304,) and flags.dtype == torch.bool
    assert set(scores.argsort(descending=True)[:4].tolist()) == set(range(300, 304))
    assert bool(flags[is_poison].all())


def test_pixel_statistics_flag_off_grid_and_out_of_range_images():
    clean = torch.randint(0, 256, (50, 1, 4, 4), generator=torch.Generator().manual_seed(1)).float() / 255
    poison = torch.stack([torch.full((1, 4, 4), 0.5013), torch.full((1, 4, 4), 1.2)])  # off the grid; outside [0, 1]
    images = (torch.cat([clean, poison]) - 0.5) / 0.5
    probe = ModelProbe(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), {"1.weight": torch.zeros(2, 16),
                                                                       "1.bias": torch.zeros(2)}, images,
                       torch.zeros(52, dtype=torch.long))
    (detector,) = make_detectors(["pixels"], mean=(0.5,), std=(0.5,), expected_fraction=0.04)
    scores, flags = detector.detect(probe)
    assert flags.tolist() == [False] * 50 + [True, True]
    assert set(scores.argsort(descending=True)[:2].tolist()) == {50, 51}


def test_auroc_and_tpr_at_fpr_agree_with_their_definitions():
    generator = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 40, (500,), generator=generator).float()  # ties included
    is_poison = torch.rand(500, generator=generator) < 0.1
    scores[is_poison] += 8
    poison, clean = scores[is_poison], scores[~is_poison]
    wins = (poison[:, None] > clean[None]).double() + 0.5 * (poison[:, None] == clean[None]).double()
    assert auroc(scores, is_poison) == pytest.approx(float(wins.mean()), abs=1e-12)  # Mann-Whitney U / (n1·n0)
    for fpr in (0.01, 0.05, 0.2):
        best = max(((clean >= t).float().mean().item() <= fpr, (poison >= t).float().mean().item(), t)
                   for t in scores.unique().tolist() + [float("inf")])
        point = operating_point(scores, is_poison, fpr)
        assert best[0] and point.tpr == pytest.approx(best[1]) and point.fpr <= fpr
        assert point.tpr == pytest.approx(float((poison >= point.threshold).float().mean()))
    with pytest.raises(DDSecError, match="strictly between 0 and 1"):
        operating_point(scores, is_poison, 1.0)


def test_confusion_and_robust_z():
    assert confusion(torch.tensor([1, 1, 0, 0], dtype=torch.bool), torch.tensor([1, 0, 1, 0], dtype=torch.bool)) == \
        {"tp": 1, "fp": 1, "fn": 1, "tn": 1}
    assert robust_z(torch.tensor([0.0, 0.0, 0.0, 2.0])).tolist() == [0.0, 0.0, 0.0, float("inf")]
    z = robust_z(torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0]))
    assert z.argmax() == 4 and z[4] > 3.5 > z[:4].max()


def test_filtering_removes_the_flagged_images_from_the_victim_s_step(digits_mlp_attack):
    from ddsec.attacks import parse_victim
    from ddsec.defences import train_victim
    from ddsec.engine.population import select

    _, job, outcome = digits_mlp_attack
    base, d = job.base, outcome.distilled
    batch = SyntheticSet.from_lrs(d.images, d.labels, d.lrs, d.meta.epochs)
    params = select(base.heldout.population, torch.tensor([0]))
    victim = parse_victim("sgd name=paper")
    keep = torch.ones(10, dtype=torch.bool)
    keep[[2, 7]] = False
    trained = train_victim(base.model, params, batch, keep, victim, base.train, seed=0)
    subset = SyntheticSet.from_lrs(d.images[:, keep], d.labels[:, keep], d.lrs, d.meta.epochs)
    alone = train_victim(base.model, params, subset, torch.ones(8, dtype=torch.bool), victim, base.train, seed=0)
    assert all(torch.equal(trained[k], alone[k]) for k in params)
    untouched = train_victim(base.model, params, batch, torch.zeros(10, dtype=torch.bool), victim, base.train, seed=0)
    assert all(torch.equal(untouched[k], params[k]) for k in params)  # nothing kept: the paper's victim takes no step
    mixed = train_victim(base.model, params, batch, torch.zeros(10, dtype=torch.bool), parse_victim("sgd mix=16"),
                         base.train, seed=0)
    assert not all(torch.equal(mixed[k], params[k]) for k in params)  # its clean images still train it


def test_detect_cli_reports_every_detector_and_writes_the_roc(digits_mlp_attack, tmp_path):
    zoo, _, outcome = digits_mlp_attack
    path = tmp_path / "batch.safetensors"
    save_distilled(path, outcome.distilled)
    result = runner.invoke(app, ["detect", str(path), "--zoo", str(zoo), "--models", "2", "--clean-size", "300",
                                 "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(payload["detectors"]) == set(DETECTOR_NAMES) and payload["models"] == 2
    assert (payload["poison_samples"], payload["clean_samples"]) == (10, 300)
    assert payload["perfect_filter"]["asr_mean"] == payload["before"]["asr_mean"]  # nothing poisoned is left
    assert payload["no_filter"]["asr_mean"] == pytest.approx(outcome.evaluation.summary()["asr_mean"], abs=0.35)
    for row in payload["detectors"].values():
        counts = row["own_rule"]
        assert counts["tp"] + counts["fn"] == 20 and counts["fp"] + counts["tn"] == 600
    assert (tmp_path / "batch.roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--fpr", "1.5"], "strictly between 0 and 1"),
    (["--layer", "fc9"], "unknown --layer 'fc9'"),
    (["--detector", "magic"], "unknown detector 'magic'"),
    (["--clean-size", "0"], "--clean-size must lie in 1"),
])
def test_detect_errors_are_one_line(digits_mlp_attack, tmp_path, args, message):
    zoo, _, outcome = digits_mlp_attack
    path = tmp_path / "batch.safetensors"
    save_distilled(path, outcome.distilled)
    result = runner.invoke(app, ["detect", str(path), "--zoo", str(zoo), "--quiet", *args])
    assert result.exit_code == 1 and message in result.stderr and "Traceback" not in result.output


def test_detect_refuses_a_file_that_is_not_a_poison_set(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("not a tensor file")
    result = runner.invoke(app, ["detect", str(path), "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    distilled = tmp_path / "d.safetensors"
    made = runner.invoke(app, ["distill", "--model", "test_cnn", "--steps", "1", "--epochs", "1", "--iterations", "1",
                               "--n-models", "1", "--eval-models", "1", "--quiet", "--out", str(distilled)])
    assert made.exit_code == 0, made.output
    result = runner.invoke(app, ["detect", str(distilled), "--quiet"])
    assert result.exit_code == 1 and "is a distill set, not a poisoning batch" in result.stderr


def test_art_agrees_with_ddsec_on_a_planted_case():
    """Class-0 poisons pushed along a direction orthogonal to every class mean (ART's spectral score
    projects uncentred features, so only there do the two scores rank alike)."""
    pytest.importorskip("art")
    from dataclasses import replace

    from ddsec.defences.art_check import agreement, art_flags
    from ddsec.defences.detectors import ActivationClustering, SpectralSignatures

    probe, is_poison = planted_probe(4 * torch.eye(6)[0] + 6 * torch.eye(6)[4])
    theirs = art_flags(probe.model, probe.params, probe.images, probe.labels, 3, poison_fraction=4 / 104)
    ours = {"spectral": SpectralSignatures(4 / 104).detect(probe)[1],
            "activation-clustering": replace(ActivationClustering(), max_share=0.5).detect(probe)[1]}
    assert bool(theirs["spectral"][is_poison].all())
    assert agreement(ours["spectral"], theirs["spectral"])["same_verdict"] > 0.95
    poisoned_class = probe.labels == 0  # the clean classes' 2-means halves are arbitrary under both
    clustering = agreement(ours["activation-clustering"][poisoned_class], theirs["activation-clustering"][poisoned_class])
    assert clustering["jaccard"] == 1.0 and bool(theirs["activation-clustering"][is_poison].all())


def test_evasion_penalty_pulls_a_planted_poison_back_inside_the_clean_range(planted):
    from ddsec.defences.evasion import EvasionPenalty
    from ddsec.defences.detectors import GradientNorm

    probe, is_poison = planted
    clean = ~is_poison
    penalty = EvasionPenalty(probe.model, ("gradient-norm", "spectral"), (probe.images[clean], probe.labels[clean]))
    params = {k: v.unsqueeze(0) for k, v in probe.params.items()}
    images = probe.images[is_poison].clone().view(1, 4, 1, 1, 6).requires_grad_(True)
    labels = probe.labels[is_poison].view(1, 4)
    before = robust_z(probe.gradient_norms)[is_poison]
    start = float(penalty(params, images, labels).detach())
    optimizer = torch.optim.Adam([images], lr=0.1)
    for _ in range(500):
        optimizer.zero_grad()
        penalty(params, images, labels).backward()
        optimizer.step()
    assert start > 1 and float(penalty(params, images, labels).detach()) < 0.01 * start
    moved = ModelProbe(probe.model, probe.params, torch.cat([probe.images[clean], images.detach().view(4, 1, 1, 6)]),
                       probe.labels)
    after = robust_z(moved.gradient_norms)[is_poison]
    assert bool((after < 0.05 * before).all()) and int(GradientNorm().detect(moved)[1][is_poison].sum()) <= 1


def test_evade_names_are_checked_in_one_line():
    from ddsec.defences.evasion import parse_evade

    assert parse_evade("gradient-norm, spectral") == ("gradient-norm", "spectral") and parse_evade(None) == ()
    with pytest.raises(DDSecError, match="--evade 'magic'"):
        parse_evade("magic")
    with pytest.raises(DDSecError, match="--pixels valid --quantize 8bit"):
        parse_evade("pixels")


def test_detect_cli_cross_checks_with_art(digits_mlp_attack, tmp_path):
    pytest.importorskip("art")
    zoo, _, outcome = digits_mlp_attack
    path = tmp_path / "batch.safetensors"
    save_distilled(path, outcome.distilled)
    result = runner.invoke(app, ["detect", str(path), "--zoo", str(zoo), "--models", "1", "--clean-size", "300",
                                 "--detector", "spectral", "--detector", "knn", "--art", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(payload["art"]) == {"spectral"} and set(payload["detectors"]) == {"spectral", "knn"}
    assert 0.9 < payload["art"]["spectral"]["same_verdict"]  # both flag about 1.5 x 10/310 of each class
