"""Print robustness matrices measured by ``ddsec stress … --json`` side by side as one markdown table.

    ddsec stress a.safetensors --json > a.json   # for each batch
    python benchmarks/stress_table.py "paper-style=a.json" "valid 8-bit=b.json" "victim-aware=c.json"

Each cell is attack success (mean ± std over the held-out models) / accuracy on the other
classes, after the victim's training; the last column is the best label-flip baseline's pair
(by attack success among those whose other classes stay within 3 points of the first batch's; the highest success when none does).
"""

from __future__ import annotations

import json
import sys


def pair(summary: dict) -> str:
    return (f"{100 * summary['asr_mean']:.1f} ± {100 * summary['asr_std']:.1f} / "
            f"{100 * summary['acc_other_after']:.1f}")


def main(arguments: list[str]) -> None:
    runs = []
    for argument in arguments:
        name, _, path = argument.partition("=")
        with open(path) as handle:
            runs.append((name, json.loads(handle.read().strip().splitlines()[-1])))
    first = runs[0][1]
    print(f"| victim | {' | '.join(name for name, _ in runs)} | label-flip (best of {len(first['victims'][0]['baselines'])}) |")
    print("|---" * (len(runs) + 2) + "|")
    for i, row in enumerate(first["victims"]):
        flips = row["baselines"]
        best = max(flips.items(), key=lambda kv: (kv[1]["acc_other_after"] >= row["batch"]["acc_other_after"] - 0.03,
                                                   kv[1]["asr_mean"])) if flips else None
        cells = [pair(run["victims"][i]["batch"]) for _, run in runs]
        flip = f"{best[0]}: {pair(best[1])}" if best else "—"
        print(f"| {row['victim']['name']} | {' | '.join(cells)} | {flip} |")
    before = first["victims"][0]["batch"]
    print(f"\nBefore any step: attack success {100 * before['asr_before']:.1f} %, other classes"
          f" {100 * before['acc_other_before']:.1f} %; {first['models']} held-out models.")


if __name__ == "__main__":
    main(sys.argv[1:])
