"""What a resumed run must keep: every setting of a front end's config but the runtime ones."""

import json
from dataclasses import dataclass, fields

import pytest

from ddsec.adapt.adapt import AdaptConfig
from ddsec.attacks.poison import PoisonConfig
from ddsec.distill import DistillConfig


@pytest.mark.parametrize("config", [DistillConfig, PoisonConfig, AdaptConfig])
def test_the_fingerprint_is_every_setting_but_the_runtime_ones(config):
    fingerprint = config().fingerprint()
    assert set(fingerprint) == {f.name for f in fields(config)} - set(config.RUNTIME)
    assert {"seed", "lr", "steps"} <= set(fingerprint) and not {"device", "data_dir"} & set(fingerprint)


def test_a_front_ends_own_setting_is_in_its_fingerprint_without_being_named():
    @dataclass(frozen=True)
    class WithOwnSetting(DistillConfig):
        strength: float = 1.0

    assert WithOwnSetting(strength=2.0).fingerprint() != WithOwnSetting().fingerprint()
    assert WithOwnSetting(device="cpu").fingerprint() == WithOwnSetting(device="auto").fingerprint()


def test_the_fingerprint_survives_a_json_round_trip():
    """A checkpoint stores the fingerprint as JSON: tuples come back as lists and must compare equal."""
    fingerprint = PoisonConfig(victims=("sgd mix=32",), evade=("loss",)).fingerprint()
    assert json.loads(json.dumps(fingerprint)) == fingerprint and fingerprint["victims"] == ["sgd mix=32"]
    assert AdaptConfig(image_size=32).fingerprint() != AdaptConfig().fingerprint()
