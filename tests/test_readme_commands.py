"""Every command in the README's code blocks runs, in order, with its own defaults plus tiny settings.

The commands are parsed from ``README.md`` itself, so the documentation and the code cannot
drift apart. Each runs in one shared working folder (so ``ddsec eval mnist.safetensors`` finds
the file an earlier command wrote) against an empty zoo: populations that a command trains on
first use are made smaller and shorter here, and nothing else about the command changes, so
defaults that depend on a population's size (``--eval-models`` against a 2-model held-out
population) are exercised as a new user meets them. ``torchrun`` lines run as one process
(distributed runs have their own tests). Data not on disk here is generated in its official
layout: a tiny VOC tree and a random-weight AlexNet file; MNIST and USPS come from
``$DDSEC_DATA`` (without it, the commands that need them are skipped).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ddsec.cli import app, common
from ddsec.condense.protocol import default_protocol
from ddsec.export import load_distilled
from ddsec.models_zoo import create_model
from ddsec.models_zoo.train import TrainRecipe

README = Path(__file__).resolve().parents[1] / "README.md"
REAL_DATASETS = ("mnist", "usps")
MNIST_SUBSET = {"train": 6000, "t10k": 1000}
runner = CliRunner()


def readme_blocks() -> list[tuple[str, str]]:
    """``(language, text)`` of every fenced code block of the README, in order."""
    return re.findall(r"^```(\w+)\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def readme_commands() -> list[str]:
    """The ``ddsec`` / ``torchrun … -m ddsec`` command lines of the bash blocks, continuations joined,
    comments dropped, ``pip … &&`` prefixes removed."""
    commands = []
    for language, text in readme_blocks():
        if language != "bash":
            continue
        for line in text.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith(("ddsec ", "torchrun ")) or part == "ddsec":
                    commands.append(" ".join(part.split()))
    return commands


def ddsec_args(command: str) -> list[str]:
    """The arguments after ``ddsec`` (a ``torchrun … -m ddsec`` line runs as one plain process)."""
    tokens = shlex.split(command)
    if tokens[0] == "torchrun":
        tokens = tokens[tokens.index("-m") + 1:]
    assert tokens[0] == "ddsec", command
    return tokens[1:]


def option(args: list[str], name: str, default: str | None = None) -> str | None:
    """The value of ``name`` in ``args`` (the last one given), else ``default``."""
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]
    return values[-1] if values else default


def tiny(args: list[str], data_root: Path) -> list[str]:
    """``args`` with the data root substituted and tiny settings appended (a later option wins)."""
    args = [str(data_root) if i and args[i - 1] == "--data-dir" else a for i, a in enumerate(args)]
    command = args[0] if args[0] != "zoo" else " ".join(args[:2])
    quick = {"--nproc": "1"} if "--nproc" in args else {}
    if command == "distill" and option(args, "--method", "dd") != "dd":
        quick |= {"--iterations": "2", "--eval-models": "1", "--eval-epochs": "2", "--batch-size": "16"}
        if option(args, "--method") != "dm":
            quick |= {"--outer-loop": "1", "--inner-loop": "1"}
    elif command == "distill":
        quick |= {"--iterations": "2", "--n-models": "2", "--batch-size": "64", "--eval-models": "2"}
    elif command in ("poison", "adapt"):  # --eval-models keeps its default: the population caps it
        quick |= {"--iterations": "2", "--n-models": "2", "--batch-size": "64"}
        if "--pairs" in args:
            quick["--pairs"] = "3:8,8:3"  # two pairs stand for all of them
        if "--baseline" in args:
            quick |= {"--grid-models": "2"} | ({"--candidates": "5"} if command == "adapt" else {})
        if "--finetune-steps" in args:
            quick["--finetune-steps"] = "2"
        if option(args, "--src") == "imagenet":
            quick |= {"--image-size": "64", "--epochs": "1"}
    elif command == "stress":
        quick |= {"--models": "2", "--baseline": "flip-average"}
    elif command == "detect":
        quick["--models"] = "2"
    elif command == "eval":
        quick["--models"] = "2"
        if default_protocol(load_distilled(args[1]).meta.config) == "train-epochs":
            quick["--epochs"] = "2"
    elif command == "zoo train":
        quick |= {"--count": "3", "--heldout": "2", "--steps": "5"}
    flags = ["--quiet"] if command in ("distill", "poison", "adapt", "eval", "stress", "detect", "zoo train") else []
    return [*args, *[x for pair in quick.items() for x in pair], *flags, "--json"]


JSON_KEYS = {"distill": {"output", "seconds", "eval"}, "poison": {"output", "attack", "target", "eval"},
             "poison --pairs": {"state", "heatmaps", "pairs"},
             "adapt": {"output", "seconds", "eval"}, "eval": {"output", "eval"}, "show": {"file", "task"},
             "stress": {"file", "models", "victims", "png"},
             "detect": {"file", "models", "detectors", "no_filter", "perfect_filter", "png"},
             "zoo": set()}
EVAL_KEYS = {"distill": {"acc_mean", "acc_std"}, "adapt": {"acc_before_mean", "acc_mean", "acc_std"},
             "poison": {"asr_mean", "asr_std", "acc_other_after"}, "eval": {"acc_mean", "acc_std"}}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, trees):
    """The shared working folder, data root (real MNIST/USPS linked, a tiny VOC tree) and empty zoo."""
    base = tmp_path_factory.mktemp("readme")
    data = base / "data"
    data.mkdir()
    real = os.environ.get("DDSEC_DATA")
    if real and (Path(real) / "MNIST").exists() and (Path(real) / "usps").exists():
        write_mnist_subset(Path(real) / "MNIST" / "raw", data / "MNIST" / "raw")
        (data / "usps").symlink_to(Path(real) / "usps")
    trees.voc_every_class(data)
    work = base / "work"
    work.mkdir()
    weights = create_model("alexnet", num_classes=1000, in_chans=3, image_size=64, seed=0).state_dict()
    torch.save(weights, work / "alexnet-owt-7be5be79.pth")  # the file the README's imagenet command names
    feature = create_model("lenet", num_classes=10, in_chans=1, image_size=28, seed=0)
    from safetensors.torch import save_file

    save_file(feature.state_dict(), str(work / "lenet-mnist.safetensors"))  # the --feature-model it names
    return work, data, base / "zoo"


def write_mnist_subset(source: Path, target: Path, sizes: dict[str, int] = MNIST_SUBSET) -> None:
    """The first images of each real MNIST split, in MNIST's own idx files (the evaluations of
    the README's MNIST commands then take seconds, not minutes)."""
    target.mkdir(parents=True)
    for split, count in sizes.items():
        for kind, header in (("images-idx3-ubyte", 16), ("labels-idx1-ubyte", 8)):
            raw = (source / f"{split}-{kind}").read_bytes()
            item = 28 * 28 if kind.startswith("images") else 1
            head = bytearray(raw[:header])
            head[4:8] = count.to_bytes(4, "big")
            (target / f"{split}-{kind}").write_bytes(bytes(head) + raw[header:header + count * item])


def needs_real_data(args: list[str]) -> bool:
    named = {option(args, flag) for flag in ("--dataset", "--src", "--tgt")}
    return bool(named & set(REAL_DATASETS)) or "mnist.safetensors" in args


def test_readme_has_the_documented_commands():
    commands = readme_commands()
    firsts = {ddsec_args(c)[0] for c in commands}
    assert {"distill", "eval", "show", "zoo", "poison", "adapt"} <= firsts
    assert len(commands) >= 20  # a parser that lost the continuation lines or a block would find far fewer


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs(command, workspace, monkeypatch):
    work, data, zoo = workspace
    args = ddsec_args(command)
    if needs_real_data(args) and not (data / "MNIST").exists():
        pytest.skip("DDSEC_DATA with MNIST and USPS is not set: real-data command skipped")
    monkeypatch.chdir(work)
    monkeypatch.setenv("DDSEC_DATA", str(data))
    monkeypatch.setenv("DDSEC_ZOO", str(zoo))
    # populations trained on first use: the real path, with fewer and shorter-trained models
    monkeypatch.setattr(common, "AUTO_COUNT", 3)
    monkeypatch.setattr(common, "AUTO_HELDOUT", 2)
    monkeypatch.setattr(common, "train_with_bars", functools.partial(common.train_with_bars,
                                                                     recipe=TrainRecipe(steps=5)))
    full = tiny(args, data)
    result = runner.invoke(app, full)
    assert result.exit_code == 0, f"{shlex.join(full)}\n{result.output}"
    assert "Traceback" not in result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    kind = "poison --pairs" if args[0] == "poison" and "--pairs" in args else args[0]
    assert JSON_KEYS[kind] <= set(payload), payload
    if kind in EVAL_KEYS:
        assert EVAL_KEYS[kind] <= set(payload["eval"]), payload


@pytest.mark.slow
def test_readme_python_block_runs(workspace, monkeypatch):
    work, _, _ = workspace
    if not (work / "mnist.safetensors").exists():
        pytest.skip("the README's first distill command (mnist.safetensors) did not run here")
    monkeypatch.chdir(work)
    (code,) = [text for language, text in readme_blocks() if language == "python"]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["loss"].ndim == 0 and scope["images_grad"].shape == scope["synthetic"].images.shape
    assert scope["dset"].images.ndim == 5
