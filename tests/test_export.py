"""Tests for ddsec.export (distilled-set safetensors format, PNG grids) and ddsec._io."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import ddsec
from ddsec._io import atomic_path, atomic_write
from ddsec.errors import DDSecError, FormatError
from ddsec.export import (
    FORMAT,
    FORMAT_MOMENTUM,
    DistilledMeta,
    DistilledSet,
    load_distilled,
    save_distilled,
    save_grid_png,
)

S, K, IPC, C, H, W, EPOCHS = 2, 3, 2, 1, 4, 5, 3
N = K * IPC


def make_meta(**changes) -> DistilledMeta:
    base = DistilledMeta(
        task="distill",
        dataset="digits",
        model="test_mlp",
        epochs=EPOCHS,
        ipc=IPC,
        init="xavier",
        mean=(0.5,),
        std=(0.25,),
        seed=7,
        num_classes=K,
        config={"lr": 0.01, "nested": {"steps": [1, 2]}, "name": "run"},
    )
    return dataclasses.replace(base, **changes)


def make_set(*, soft: bool = False, channels: int = C, **meta_changes) -> DistilledSet:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(S, N, channels, H, W, generator=gen)
    if soft:
        labels = torch.softmax(torch.randn(S, N, K, generator=gen), dim=-1)
    else:
        labels = torch.arange(K).repeat_interleave(IPC).repeat(S, 1)
    lrs = torch.rand(S * EPOCHS, generator=gen) + 0.01
    if channels != C:
        meta_changes.setdefault("mean", (0.5,) * channels)
        meta_changes.setdefault("std", (0.25,) * channels)
    return DistilledSet(images=images, labels=labels, lrs=lrs, meta=make_meta(**meta_changes))


def assert_same(a: DistilledSet, b: DistilledSet) -> None:
    for name in ("images", "labels", "lrs"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name
    assert a.meta == b.meta


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"soft": True},
        {"task": "poison", "attack_class": 1, "target_class": 2},
        {"task": "adapt", "source": "mnist", "target": "usps", "channels": 3},
    ],
    ids=["hard", "soft", "poison", "adapt-rgb"],
)
def test_round_trip(tmp_path: Path, kwargs: dict) -> None:
    dset = make_set(**kwargs)
    out = save_distilled(tmp_path / "sub" / "set.safetensors", dset)
    assert out == tmp_path / "sub" / "set.safetensors" and out.is_file()
    loaded = load_distilled(out)
    assert_same(dset, loaded)
    assert loaded.steps == S and loaded.total_steps == S * EPOCHS and loaded.images_per_step == N
    assert loaded.soft_labels == kwargs.get("soft", False)
    assert isinstance(loaded.meta.mean, tuple) and isinstance(loaded.meta.config, dict)


def test_metadata_strings_match_design(tmp_path: Path) -> None:
    from safetensors import safe_open

    dset = make_set(task="poison", attack_class=0, target_class=2)
    path = save_distilled(tmp_path / "p.safetensors", dset)
    with safe_open(str(path), framework="pt") as fh:
        raw = fh.metadata()
        assert set(fh.keys()) == {"images", "labels", "lrs"}
    assert raw["format"] == FORMAT == "ddsec.distilled/1"
    assert raw["ddsec_version"] == ddsec.__version__
    assert raw["steps"] == str(S) and raw["epochs"] == str(EPOCHS) and raw["ipc"] == str(IPC)
    assert json.loads(raw["mean"]) == [0.5] and json.loads(raw["std"]) == [0.25]
    assert json.loads(raw["config"])["nested"] == {"steps": [1, 2]}
    assert raw["attack_class"] == "0" and raw["target_class"] == "2"
    assert "source" not in raw and "target" not in raw


def test_save_converts_float64_and_grad_tensors(tmp_path: Path) -> None:
    dset = make_set()
    dset64 = dataclasses.replace(
        dset, images=dset.images.double().requires_grad_(), lrs=dset.lrs.double()
    )
    loaded = load_distilled(save_distilled(tmp_path / "d.safetensors", dset64))
    assert loaded.images.dtype == torch.float32 and loaded.lrs.dtype == torch.float32
    assert torch.allclose(loaded.images, dset.images)


def test_meta_accepts_list_and_int_stats() -> None:
    meta = make_meta(mean=[0, 1], std=[1, 2])
    assert meta.mean == (0.0, 1.0) and meta.std == (1.0, 2.0)


# ------------------------------------------------------------------ corrupt / foreign files


def raw_parts(dset: DistilledSet, tmp_path: Path) -> tuple[dict, dict]:
    """Tensors and metadata strings of a valid file, to tamper with."""
    from safetensors import safe_open

    path = save_distilled(tmp_path / "valid.safetensors", dset)
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())


def expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(FormatError) as info:
        load_distilled(path)
    message = str(info.value)
    assert isinstance(info.value, DDSecError)
    assert path.name in message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope.safetensors", "not found")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.safetensors").mkdir()
    expect_error(tmp_path / "dir.safetensors", "not a file")


@pytest.mark.parametrize("kind", ["half", "random", "empty", "header-only"])
def test_not_safetensors_or_truncated(tmp_path: Path, kind: str) -> None:
    good = save_distilled(tmp_path / "good.safetensors", make_set()).read_bytes()
    content = {
        "half": good[: len(good) // 2],
        "random": os.urandom(4096),
        "empty": b"",
        "header-only": good[:20],
    }[kind]
    path = tmp_path / f"{kind}.safetensors"
    path.write_bytes(content)
    expect_error(path, "not a safetensors file or is truncated")


def test_foreign_checkpoint_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"conv.weight": torch.randn(4, 1, 3, 3), "fc.bias": torch.randn(10)}, str(path))
    expect_error(path, "is not a ddsec distilled set (format missing)")


@pytest.mark.parametrize("fmt", ["pt", "ddsec.population/1", "ddsec.distilled/x",
                                 "ddsec.distilled/0"])
def test_foreign_format_string(tmp_path: Path, fmt: str) -> None:
    tensors, meta = raw_parts(make_set(), tmp_path)
    path = tmp_path / "foreign.safetensors"
    save_file(tensors, str(path), metadata={**meta, "format": fmt})
    expect_error(path, "is not a ddsec distilled set", repr(fmt))


def test_newer_format_version(tmp_path: Path) -> None:
    tensors, meta = raw_parts(make_set(), tmp_path)
    path = tmp_path / "future.safetensors"
    save_file(tensors, str(path), metadata={**meta, "format": "ddsec.distilled/3"})
    expect_error(path, "newer", "upgrade")


def test_momenta_round_trip_as_version_2(tmp_path: Path) -> None:
    from safetensors import safe_open

    dset = dataclasses.replace(make_set(), momenta=torch.linspace(0.1, 0.9, S * EPOCHS))
    path = save_distilled(tmp_path / "m.safetensors", dset)
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata()["format"] == FORMAT_MOMENTUM == "ddsec.distilled/2"
        assert set(fh.keys()) == {"images", "labels", "lrs", "momenta"}
    loaded = load_distilled(path)
    assert_same(dset, loaded)
    assert torch.equal(loaded.momenta, dset.momenta)
    assert load_distilled(save_distilled(tmp_path / "plain.safetensors", make_set())).momenta is None


@pytest.mark.parametrize(("momenta", "message"), [
    (torch.full((S * EPOCHS,), 1.0), "momenta must lie in (0, 1)"),
    (torch.full((S * EPOCHS + 1,), 0.5), "momenta has 7 entries"),
])
def test_bad_momenta_are_refused(tmp_path: Path, momenta: torch.Tensor, message: str) -> None:
    with pytest.raises(FormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        save_distilled(tmp_path / "bad.safetensors", dataclasses.replace(make_set(), momenta=momenta))
    assert not (tmp_path / "bad.safetensors").exists()


def test_version_2_without_momenta_is_refused(tmp_path: Path) -> None:
    tensors, meta = raw_parts(make_set(), tmp_path)
    path = tmp_path / "v2.safetensors"
    save_file(tensors, str(path), metadata={**meta, "format": FORMAT_MOMENTUM})
    expect_error(path, "missing tensor(s) momenta")


def _bad_tensors(dset: DistilledSet) -> dict[str, tuple[str, object, str]]:
    images, labels, lrs = dset.images, dset.labels, dset.lrs
    nan_images = images.clone()
    nan_images[0, 0, 0, 0, 0] = float("nan")
    inf_images = images.clone()
    inf_images[-1, -1, 0, 1, 1] = float("inf")
    return {
        "images-float64": ("images", images.double(), "images must be torch.float32"),
        "images-rank4": ("images", images[0], "images must be torch.float32 with 5"),
        "images-nan": ("images", nan_images, "images contain NaN or inf"),
        "images-inf": ("images", inf_images, "images contain NaN or inf"),
        "labels-int32": ("labels", labels.int(), "labels must be torch.int64"),
        "labels-shape": ("labels", labels[:, :-1].contiguous(), "labels must have shape"),
        "labels-negative": ("labels", labels - 1, "labels must lie in [0, 3)"),
        "labels-too-big": ("labels", labels + 1, "labels must lie in [0, 3)"),
        "soft-wrong-k": ("labels", torch.rand(S, N, K + 1), "soft labels must have shape"),
        "soft-nan": ("labels", torch.full((S, N, K), float("nan")), "soft labels contain NaN"),
        "lrs-float64": ("lrs", lrs.double(), "lrs must be torch.float32"),
        "lrs-rank2": ("lrs", lrs.view(S, EPOCHS), "lrs must be torch.float32 with 1"),
        "lrs-length": ("lrs", lrs[:-1].contiguous(), "steps*epochs"),
        "lrs-zero": ("lrs", torch.zeros_like(lrs), "lrs must be positive"),
        "lrs-negative": ("lrs", -lrs, "lrs must be positive"),
        "lrs-nan": ("lrs", torch.full_like(lrs, float("nan")), "lrs contain NaN or inf"),
        "lrs-inf": ("lrs", torch.full_like(lrs, float("inf")), "lrs contain NaN or inf"),
    }


@pytest.mark.parametrize("case", list(_bad_tensors(make_set())))
def test_bad_tensor(tmp_path: Path, case: str) -> None:
    tensors, meta = raw_parts(make_set(), tmp_path)
    name, value, fragment = _bad_tensors(make_set())[case]
    path = tmp_path / f"{case}.safetensors"
    save_file({**tensors, name: value}, str(path), metadata=meta)
    expect_error(path, fragment)


@pytest.mark.parametrize("missing", ["images", "labels", "lrs"])
def test_missing_tensor(tmp_path: Path, missing: str) -> None:
    tensors, meta = raw_parts(make_set(), tmp_path)
    del tensors[missing]
    path = tmp_path / "missing.safetensors"
    save_file(tensors, str(path), metadata=meta)
    expect_error(path, "missing tensor", missing)


BAD_METADATA = {
    "config-json": ({"config": "{not json"}, "'config' is not valid JSON"),
    "config-list": ({"config": "[1, 2]"}, "'config' must be a JSON object"),
    "mean-json": ({"mean": "[0.5"}, "'mean' is not valid JSON"),
    "mean-strings": ({"mean": '["a"]'}, "'mean' must be a JSON list of numbers"),
    "mean-length": ({"mean": "[0.5, 0.5]"}, "mean has 2 channels but std has 1"),
    "stats-length": ({"mean": "[0.5, 0.5]", "std": "[1, 1]"}, "images have 1 channels"),
    "std-zero": ({"std": "[0]"}, "std must be positive"),
    "epochs-text": ({"epochs": "three"}, "'epochs' is not an integer"),
    "epochs-zero": ({"epochs": "0"}, "epochs must be at least 1"),
    "epochs-mismatch": ({"epochs": "2"}, "steps*epochs"),
    "steps-mismatch": ({"steps": "5"}, "metadata 'steps' is 5"),
    "num-classes-small": ({"num_classes": "2"}, "labels must lie in [0, 2)"),
    "task": ({"task": "train"}, "task must be one of"),
    "poison-no-target": ({"task": "poison", "attack_class": "1"}, "needs attack_class"),
    "poison-range": ({"task": "poison", "attack_class": "1", "target_class": "9"},
                     "target_class must be a class in [0, 3)"),
    "adapt-no-source": ({"task": "adapt", "target": "usps"}, "needs source and target"),
}


@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_bad_metadata(tmp_path: Path, case: str) -> None:
    tensors, meta = raw_parts(make_set(), tmp_path)
    changes, fragment = BAD_METADATA[case]
    path = tmp_path / f"{case}.safetensors"
    save_file(tensors, str(path), metadata={**meta, **changes})
    expect_error(path, fragment)


@pytest.mark.parametrize("key", ["task", "dataset", "model", "steps", "epochs", "ipc", "init",
                                 "mean", "std", "seed", "num_classes", "config"])
def test_missing_metadata_key(tmp_path: Path, key: str) -> None:
    tensors, meta = raw_parts(make_set(), tmp_path)
    del meta[key]
    path = tmp_path / "nokey.safetensors"
    save_file(tensors, str(path), metadata=meta)
    expect_error(path, f"metadata {key!r} is missing")


# ------------------------------------------------------------------ save-side validation


@pytest.mark.parametrize(
    "change",
    [
        {"lrs": -torch.ones(S * EPOCHS)},
        {"labels": torch.full((S, N), K)},
        {"meta": make_meta(task="poison")},
        {"meta": make_meta(config={"bad": object()})},
        {"meta": make_meta(mean=(0.5, 0.5), std=(1.0, 1.0))},
    ],
    ids=["lrs", "labels", "poison-details", "config-json", "channels"],
)
def test_save_rejects_invalid_and_writes_nothing(tmp_path: Path, change: dict) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"previous")
    with pytest.raises(FormatError, match="cannot save .*bad.safetensors"):
        save_distilled(path, dataclasses.replace(make_set(), **change))
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


def test_validate_method() -> None:
    make_set().validate()
    with pytest.raises(FormatError, match="lrs must be positive"):
        dataclasses.replace(make_set(), lrs=torch.zeros(S * EPOCHS)).validate()


# ------------------------------------------------------------------ atomic writes


def test_atomic_write_success_leaves_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "b" / "out.bin"
    assert atomic_write(dest, lambda tmp: tmp.write_bytes(b"data")) == dest
    assert dest.read_bytes() == b"data"
    assert [p.name for p in dest.parent.iterdir()] == ["out.bin"]
    with atomic_path(dest) as tmp:
        assert tmp.parent == dest.parent and tmp.exists()
        tmp.write_bytes(b"new")
        assert dest.read_bytes() == b"data"  # not visible until the block ends
    assert dest.read_bytes() == b"new"
    assert [p.name for p in dest.parent.iterdir()] == ["out.bin"]


@pytest.mark.parametrize("existing", [True, False])
def test_atomic_write_error_keeps_destination(tmp_path: Path, existing: bool) -> None:
    dest = tmp_path / "out.bin"
    if existing:
        dest.write_bytes(b"old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"half a fi")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(dest, half_then_fail)
    if existing:
        assert dest.read_bytes() == b"old"
        assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    else:
        assert list(tmp_path.iterdir()) == []


def test_atomic_path_keyboard_interrupt_cleans_up(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ PNG grids


@pytest.mark.parametrize("channels,mode", [(1, "L"), (3, "RGB")])
def test_grid_png_size_and_mode(tmp_path: Path, channels: int, mode: str) -> None:
    steps, per_step, pad, scale = 3, 4, 2, 2
    images = torch.randn(steps, per_step, channels, H, W)
    out = save_grid_png(tmp_path / "g" / "grid.png", images, (0.5,) * channels,
                        (0.25,) * channels, pad=pad, scale=scale)
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.mode == mode
        assert picture.size == (per_step * W * scale + (per_step + 1) * pad,
                                steps * H * scale + (steps + 1) * pad)
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]


def test_grid_png_pixels_are_denormalised(tmp_path: Path) -> None:
    images = torch.zeros(2, 1, 1, 2, 2)  # normalised 0 -> pixel 0.5
    images[1] = 2.0  # 2 * 0.5 + 0.5 = 1.5 -> clamped to 1
    images[0, 0, 0, 0, 0] = float("nan")  # must not break the PNG
    out = save_grid_png(tmp_path / "grid.png", images, [0.5], [0.5], pad=1)
    with Image.open(out) as picture:
        assert picture.size == (4, 7)
        assert picture.getpixel((0, 0)) == 255  # padding
        assert picture.getpixel((2, 2)) == 128
        assert picture.getpixel((1, 4)) == 255


@pytest.mark.parametrize(
    "images,kwargs",
    [
        (torch.zeros(1, 1, 2, 2), {}),
        (torch.zeros(1, 1, 2, 2, 2), {}),
        (torch.zeros(1, 1, 1, 2, 2), {"scale": 0}),
        (torch.zeros(1, 1, 1, 2, 2), {"pad": -1}),
    ],
    ids=["rank4", "two-channels", "scale0", "pad-negative"],
)
def test_grid_png_rejects_bad_arguments(tmp_path: Path, images, kwargs) -> None:
    with pytest.raises(ValueError):
        save_grid_png(tmp_path / "g.png", images, [0.5], [0.5], **kwargs)
    assert list(tmp_path.iterdir()) == []
