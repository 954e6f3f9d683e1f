"""Summarise a class-pair sweep (``ddsec poison --pairs … --out X.safetensors`` writes ``X.json``) as markdown.

    python benchmarks/sweep_table.py sweep/digits.json

Prints the distribution over pairs of held-out attack success, of its worst decile of models and
of the collateral (drop of accuracy on the other classes, in points), the median and worst
pairs, how many pairs reach 50 / 75 / 90 % within the collateral budget, how many exceed the
budget on the held-out models or at crafting's own check, and the crafting time; then the ten
weakest and strongest pairs.
"""

from __future__ import annotations

import json
import statistics
import sys


def quartiles(values: list[float]) -> str:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{min(values):.1f} / {q1:.1f} / **{median:.1f}** / {q3:.1f} / {max(values):.1f}"


def _budget_met(crafting: dict) -> bool:
    """The crafting record's ``budget_met`` (sweeps before it existed: its bound against the budget)."""
    if "budget_met" in crafting:
        return bool(crafting["budget_met"])
    return crafting["train_collateral_bound"] <= crafting["max_collateral"]


def main(path: str) -> None:
    with open(path) as handle:
        sweep = json.load(handle)
    done = {k: p for k, p in sweep["pairs"].items() if p["status"] == "done"}
    failed = sorted(k for k, p in sweep["pairs"].items() if p["status"] != "done")
    if len(done) < 2:
        raise SystemExit(f"{path}: {len(done)} finished pairs; a summary needs at least 2")
    success = {k: 100 * p["eval"]["asr_mean"] for k, p in done.items()}
    worst = {k: 100 * p["eval"]["asr_worst_decile"] for k, p in done.items()}
    collateral = {k: 100 * (p["eval"]["acc_other_before"] - p["eval"]["acc_other_after"]) for k, p in done.items()}
    limit = next(iter(done.values()))["crafting"]["max_collateral"]  # None: the paper's objective, no budget
    budget = 3.0 if limit is None else 100 * limit
    seconds = sum(p["seconds"] for p in done.values())
    print(f"{len(done)} pairs done, {len(failed)} failed {failed if failed else ''}; {seconds / 3600:.2f} h of crafting"
          f" and evaluation ({seconds / max(len(done), 1):.0f} s per pair); {done[next(iter(done))]['eval']['models']}"
          f" held-out models per pair; " + ("no budget (the paper's objective): 3 points used as the bar\n"
                                           if limit is None else f"budget {budget:.0f} points\n"))
    print("| over the pairs | min / lower quartile / **median** / upper quartile / max |")
    print("|---|---|")
    print(f"| attack success, mean over held-out models (%) | {quartiles(list(success.values()))} |")
    print(f"| attack success, worst tenth of models (%) | {quartiles(list(worst.values()))} |")
    print(f"| collateral (points) | {quartiles(list(collateral.values()))} |")
    within = {k for k in done if collateral[k] <= budget}
    print(f"\npairs within the budget on the held-out models: {len(within)} of {len(done)}")
    if limit is not None:
        missed = [k for k, p in done.items() if not _budget_met(p["crafting"])]
        print(f"pairs whose training check never met the budget (its 95 % bound over it): {len(missed)} of {len(done)}")
    for bar in (50, 75, 90):
        count = sum(1 for k in within if success[k] >= bar)
        print(f"pairs at ≥ {bar} % attack success within the budget: {count} of {len(done)}")
    ranked = sorted(done, key=lambda k: success[k])
    median_pair = ranked[len(ranked) // 2]

    def row(k: str) -> str:
        return f"{k.replace(':', ' → ')}: {success[k]:.1f} % (worst tenth {worst[k]:.1f}), collateral {collateral[k]:.1f}"

    print(f"median pair: {row(median_pair)}")
    print(f"weakest pairs: {'; '.join(row(k) for k in ranked[:10])}")
    print(f"strongest pairs: {'; '.join(row(k) for k in ranked[::-1][:10])}")


if __name__ == "__main__":
    main(sys.argv[1])
