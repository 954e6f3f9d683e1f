"""Every class pair: one K→T attack per pair, resumable pair by pair (``ddsec poison --pairs``).

A security researcher first asks which pairs are vulnerable and what an attack costs the other
classes. The sweep runs one attack per pair ``(K, T)`` (Wang et al., arXiv 1811.10959, §3.4), every
pair re-targeting one :class:`~ddsec.attacks.poison.PoisonJob` (data and populations are loaded
once), and reports per pair the held-out attack success as mean, std and worst-decile mean (what
makes a pair hard shows in the spread, not only in the mean) and the collateral: the drop in
accuracy on the other classes.

Files, named after ``out`` (a ``.safetensors`` path used as a stem):

- ``<stem>-K-T.safetensors``: each pair's batch (its checkpoint ``….ckpt`` while it runs);
- ``<stem>.json``: the sweep's settings and every finished pair's record (its metrics, or the
  error it failed with), rewritten atomically after each pair; a resumed sweep skips the pairs
  it lists and continues an interrupted pair from its checkpoint;
- ``<stem>-success.png`` and ``<stem>-collateral.png``: K × T heatmaps, redrawn after each pair.

A pair that fails with a :class:`~ddsec.errors.DDSecError` (NaN/inf included) is recorded with
its error and the sweep goes on; Ctrl-C stops it with the running pair checkpointed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ddsec._io import atomic_path
from ddsec.attacks.poison import PoisonConfig, PoisonJob, prepare_poison, run_poison
from ddsec.engine import DEFAULT_CHECKPOINT_SECONDS, Progress, world
from ddsec.engine.checkpoint import refuse_other_settings
from ddsec.errors import DDSecError
from ddsec.export import save_distilled

SWEEP_FORMAT = "ddsec.sweep/1"
Pair = tuple[int, int]


def parse_pairs(text: str, num_classes: int, dataset: str) -> list[Pair]:
    """``(K, T)`` pairs from ``--pairs``: ``all`` (every ordered pair of distinct classes, K-major) or
    a comma-separated list such as ``3:8,1:7``.

    Raises:
        DDSecError: a malformed item, a class out of range, ``K = T``, or a pair listed twice.
    """
    if text.strip() == "all":
        return [(k, t) for k in range(num_classes) for t in range(num_classes) if k != t]
    pairs: list[Pair] = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+):(\d+)\s*", item)
        if match is None:
            raise DDSecError(f"--pairs: {item.strip()!r} is not K:T; give all or a list such as 3:8,1:7")
        pair = (int(match[1]), int(match[2]))
        label = f"{pair[0]}:{pair[1]}"
        if pair[0] == pair[1]:
            raise DDSecError(f"--pairs {label}: the attacked and the target class must differ")
        for c in pair:
            if c >= num_classes:
                raise DDSecError(f"--pairs {label}: class {c} is out of range: {dataset} has classes"
                                 f" 0 … {num_classes - 1}")
        if pair in pairs:
            raise DDSecError(f"--pairs lists {label} twice")
        pairs.append(pair)
    return pairs


def prepare_sweep(cfg: PoisonConfig, pairs: str, train_entry: Callable[[str], None] | None = None,
                  ) -> tuple[PoisonJob, list[Pair]]:
    """Validate ``pairs`` against the dataset's classes, then load data and populations once (as
    :func:`~ddsec.attacks.poison.prepare_poison`, for the first pair); fails fast with one line."""
    from ddsec.data import load_dataset

    test = load_dataset(cfg.dataset, train=False, root=cfg.data_dir, download=cfg.download)
    chosen = parse_pairs(pairs, test.num_classes, test.name)
    return prepare_poison(replace(cfg, attack=chosen[0][0], target=chosen[0][1]), train_entry), chosen


def for_pair(job: PoisonJob, pair: Pair) -> PoisonJob:
    """``job`` re-targeted to ``pair`` (same data, model and populations; its own fingerprint)."""
    attack, target = pair
    base = replace(job.base, fingerprint={**job.base.fingerprint, "attack": attack, "target": target})
    return replace(job, cfg=replace(job.cfg, attack=attack, target=target), base=base)


@dataclass(frozen=True)
class SweepPaths:
    """Where a sweep named after ``out`` writes (see the module docstring)."""

    out: Path

    @property
    def state(self) -> Path:
        return self.out.with_suffix(".json")

    @property
    def success(self) -> Path:
        return self.out.with_name(f"{self.out.stem}-success.png")

    @property
    def collateral(self) -> Path:
        return self.out.with_name(f"{self.out.stem}-collateral.png")

    def batch(self, pair: Pair) -> Path:
        return self.out.with_name(f"{self.out.stem}-{pair[0]}-{pair[1]}.safetensors")

    def checkpoint(self, pair: Pair) -> Path:
        batch = self.batch(pair)
        return batch.with_name(batch.name + ".ckpt")


def key(pair: Pair) -> str:
    """A pair's key in the sweep's JSON: ``"K:T"``."""
    return f"{pair[0]}:{pair[1]}"


def sweep_fingerprint(job: PoisonJob, pairs: list[Pair]) -> dict:
    """Settings a resumed sweep must share: the attack's (minus the pair), the evaluation's, the pairs."""
    attack = {k: v for k, v in job.base.fingerprint.items() if k not in ("attack", "target")}
    settings = attack | {"heldout_population": job.base.cfg.heldout_population, "eval_models": job.cfg.eval_models,
                         "eval_population": job.cfg.eval_population, "pairs": [key(pair) for pair in pairs]}
    return json.loads(json.dumps(settings))  # as read back from the sweep's JSON


@dataclass
class SweepResult:
    """Every finished pair's record by ``"K:T"`` (in the order run), the files, and how many pairs
    were already done when the sweep (re)started."""

    records: dict[str, dict]
    paths: SweepPaths
    skipped: int


def run_sweep(
    job: PoisonJob,
    pairs: list[Pair],
    out: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    checkpoint_seconds: float | None = DEFAULT_CHECKPOINT_SECONDS,
    on_pair: Callable[[int, Pair, dict | None], None] | None = None,
    on_progress: Callable[[Progress, float | None], None] | None = None,
) -> SweepResult:
    """Run one attack per pair, export each batch, record its metrics; resumable pair by pair.

    Args:
        job: from :func:`prepare_sweep` (any pair's job: each pair re-targets it).
        pairs: the ``(K, T)`` pairs, in order.
        out: a ``.safetensors`` path naming the sweep's files (see :class:`SweepPaths`).
        resume: continue the sweep recorded next to ``out``: skip its finished pairs, continue an
            interrupted one from its checkpoint.
        force: start over, removing an unfinished sweep's record and the pairs' checkpoints.
        checkpoint_seconds: each pair checkpoints at least this often.
        on_pair: called as ``on_pair(done, pair, None)`` before a pair runs and ``on_pair(done, pair,
            record)`` after (``done``: pairs finished before it, skipped ones included).
        on_progress: every pair's outer-loop progress (see :func:`~ddsec.attacks.poison.run_poison`).

    Raises:
        DDSecError: an unfinished sweep (or a pair's checkpoint) found without ``resume`` or ``force``,
            ``resume`` with nothing to resume or other settings, or a distributed run.
    """
    if world().size > 1:
        raise DDSecError("--pairs runs in one process: drop --nproc (or torchrun)")
    paths = SweepPaths(Path(out))
    fingerprint = sweep_fingerprint(job, pairs)
    records = _start(paths, fingerprint, pairs, resume=resume, force=force)
    skipped = len(records)
    for pair in pairs:
        if key(pair) in records:
            continue
        if on_pair is not None:
            on_pair(len(records), pair, None)
        checkpoint = paths.checkpoint(pair)
        try:
            outcome = run_poison(for_pair(job, pair), checkpoint_path=checkpoint, resume=checkpoint.exists(),
                                 checkpoint_seconds=checkpoint_seconds, on_progress=on_progress)
        except DDSecError as exc:
            checkpoint.unlink(missing_ok=True)  # a failed pair is recorded, never resumed
            records[key(pair)] = {"attack": pair[0], "target": pair[1], "status": "failed", "error": str(exc)}
        else:
            save_distilled(paths.batch(pair), outcome.distilled)
            checkpoint.unlink(missing_ok=True)
            s = outcome.evaluation.summary()
            records[key(pair)] = {
                "attack": pair[0], "target": pair[1], "status": "done", "output": str(paths.batch(pair)),
                "seconds": round(outcome.seconds, 3), "collateral": s["acc_other_before"] - s["acc_other_after"],
                "eval": s, "crafting": outcome.crafting,
                **({} if outcome.transfer is None else {"transfer": outcome.transfer.summary()}),
            }
        _write(paths, fingerprint, records, finished=len(records) == len(pairs))
        draw_heatmaps(paths, records, job.base.test.class_names, job.cfg.max_collateral)
        if on_pair is not None:
            on_pair(len(records), pair, records[key(pair)])
    return SweepResult(records, paths, skipped)


def _start(paths: SweepPaths, fingerprint: dict, pairs: list[Pair], *, resume: bool, force: bool) -> dict[str, dict]:
    """The records a sweep starts from (a resumed sweep's, else none), after checking the files."""
    if resume and force:
        raise DDSecError("--resume continues a sweep and --force starts it over: pass only one")
    state = _read(paths.state) if paths.state.exists() else None
    if resume:
        if state is None:
            raise DDSecError(f"--resume: there is no sweep {paths.state} to resume; run the command without --resume")
        refuse_other_settings(f"sweep {paths.state}", state["fingerprint"], fingerprint)
        return dict(state["pairs"])
    if force:
        for pair in pairs:
            paths.checkpoint(pair).unlink(missing_ok=True)
    elif state is not None and not state["finished"]:
        raise DDSecError(f"an unfinished sweep left {paths.state}; pass --resume to continue it or --force to"
                         " start over")
    else:
        for pair in pairs:
            if paths.checkpoint(pair).exists():
                raise DDSecError(f"an unfinished run left {paths.checkpoint(pair)}; pass --resume to continue it or"
                                 " --force to start over")
    _write(paths, fingerprint, {}, finished=False)
    return {}


def _read(path: Path) -> dict:
    try:
        state = json.loads(path.read_text())
        if state.get("format") != SWEEP_FORMAT:
            raise ValueError(f"format {state.get('format')!r}")
        return state
    except (OSError, ValueError, AttributeError) as exc:
        raise DDSecError(f"{path} is not a readable ddsec sweep ({exc}); delete it or pass --force") from None


def _write(paths: SweepPaths, fingerprint: dict, records: dict[str, dict], *, finished: bool) -> None:
    payload = {"format": SWEEP_FORMAT, "fingerprint": fingerprint, "finished": finished, "pairs": records}
    with atomic_path(paths.state) as tmp:
        tmp.write_text(json.dumps(payload, indent=1) + "\n")


def draw_heatmaps(paths: SweepPaths, records: dict[str, dict], class_names: list[str],
                  max_collateral: float | None) -> None:
    """The K × T heatmaps of the finished pairs: held-out attack success (mean) and collateral, rows
    the attacked classes, columns the targets run; failed pairs stay empty. The collateral colours
    span twice the budget (the largest collateral for the paper's objective)."""
    from ddsec.plots import heatmap

    done = [r for r in records.values() if r["status"] == "done"]
    if not done:
        return
    rows = sorted({r["attack"] for r in records.values()})
    columns = sorted({r["target"] for r in records.values()})
    success = np.full((len(rows), len(columns)), np.nan)
    collateral = success.copy()
    for r in done:
        cell = rows.index(r["attack"]), columns.index(r["target"])
        success[cell], collateral[cell] = r["eval"]["asr_mean"], r["collateral"]

    def names(classes: list[int], letter: str) -> list[str]:
        return [f"{letter}={c}" + ("" if class_names[c] == str(c) else f" {class_names[c]}") for c in classes]

    models = done[0]["eval"]["models"]
    heatmap(paths.success, success, names(rows, "K"), names(columns, "T"),
            f"attack success K → T, mean of {models} held-out models (%)")
    vmax = 2 * max_collateral if max_collateral is not None else float(np.nanmax(collateral))
    heatmap(paths.collateral, collateral, names(rows, "K"), names(columns, "T"),
            f"collateral: drop in accuracy on the other classes, {models} held-out models (points)",
            vmax=vmax if vmax > 0 else 1.0, decimals=1)
