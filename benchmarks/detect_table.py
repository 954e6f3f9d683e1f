"""Print what ``ddsec detect … --json`` measured as one markdown table per run.

    ddsec detect paper.safetensors --models 20 --json > paper.json
    python benchmarks/detect_table.py "3 → 8, paper-style, 1,000-image fine-tuning set=paper.json" …

Per detector: AUROC (mean ± std over the held-out models), the true-positive rate at each
false-positive rate of the run, the own rule's TP/FP/FN/TN summed over the models, and the attack
success (mean ± std) and clean accuracy after the victim trains on what the detector keeps at
its 5 %-FPR operating point; then the no-filter and perfect-filter rows, and ART's agreement when
the run cross-checked it.
"""

from __future__ import annotations

import json
import sys


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def table(name: str, run: dict) -> None:
    fprs = list(next(iter(run["detectors"].values()))["tpr_at_fpr"])
    print(f"**{name}**: {run['poison_samples']} poison among {run['clean_samples']} clean samples,"
          f" {run['models']} held-out models, victim `{run['victim']}`\n")
    print(f"| detector | AUROC | {' | '.join(f'TPR @ FPR {100 * float(f):g} %' for f in fprs)} | own rule TP/FP/FN/TN |"
          " attack success after filtering | clean accuracy after |")
    print("|---" * (len(fprs) + 5) + "|")
    for detector, row in run["detectors"].items():
        counts, after = row["own_rule"], row["after_filter"]
        print(f"| {detector} | {row['auroc']['mean']:.3f} ± {row['auroc']['std']:.3f} | "
              f"{' | '.join(percent(row['tpr_at_fpr'][f]['mean']) for f in fprs)} | "
              f"{counts['tp']}/{counts['fp']}/{counts['fn']}/{counts['tn']} | "
              f"{percent(after['asr_mean'])} ± {percent(after['asr_std'])} | {percent(after['acc_clean'])} |")
    for label, key in (("no filter", "no_filter"), ("perfect filter", "perfect_filter")):
        row = run[key]
        print(f"| {label} | | {' | '.join('' for _ in fprs)} | | {percent(row['asr_mean'])} ± {percent(row['asr_std'])}"
              f" | {percent(row['acc_clean'])} |")
    for detector, check in run.get("art", {}).items():
        print(f"\nART {detector}: the same verdict on {percent(check['same_verdict'])} % of the samples, Jaccard of"
              f" the flagged sets {check['jaccard']:.2f} (mean over models).")
    print()


def main(arguments: list[str]) -> None:
    for argument in arguments:
        name, _, path = argument.partition("=")
        with open(path) as handle:
            table(name, json.loads(handle.read().strip().splitlines()[-1]))


if __name__ == "__main__":
    main(sys.argv[1:])
