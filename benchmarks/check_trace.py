"""Plot the collateral budget's measurements while crafting, from ``ddsec poison --json`` output.

    ddsec poison --dataset mnist --attack 0 --target 1 --json > run.out
    python benchmarks/check_trace.py run.out benchmarks/figures/checks-mnist-0-1.png

The JSON is the last line of the file (``crafting.checks``). Top: attack success on the check's
models; bottom: the collateral's mean and its 95 % upper bound (the budget holds the bound), with
the budget drawn in, and λ on a second axis. The kept batch's iteration is marked on both. Prints,
per third of the run, the range of each measured column and the strongest attack success within
budget.
"""

from __future__ import annotations

import json
import sys


def thirds(checks: list[dict], budget: float) -> None:
    """Print, per third of the logged measurements, the ranges of each column and the strongest
    attack success within budget."""
    bounds = [round(i * len(checks) / 3) for i in range(4)]
    for start, end in zip(bounds, bounds[1:]):
        part = checks[start:end]
        if not part:
            continue
        within = [c["asr"] for c in part if c["collateral_bound"] <= budget]
        span = f"iterations {part[0]['iteration']}–{part[-1]['iteration']}"
        asr, mean, bound = (span_of(part, name, 100, ".1f") for name in ("asr", "collateral", "collateral_bound"))
        best = f"{100 * max(within):.1f} %" if within else "none"
        print(f"{span}: attack success {asr} %, collateral {mean} points (bound {bound}),"
              f" λ {span_of(part, 'lambda', 1, '.3g')}; strongest within budget {best}")


def span_of(checks: list[dict], name: str, scale: float, form: str) -> str:
    """``min–max`` of one column of ``checks``, times ``scale``, each in the format ``form``."""
    values = [scale * c[name] for c in checks]
    return f"{min(values):{form}}–{max(values):{form}}"


def main(source: str, picture: str) -> None:
    with open(source) as handle:
        payload = json.loads(handle.read().strip().splitlines()[-1])
    if "crafting" not in payload:
        raise SystemExit(f"{source}: not the --json output of one `ddsec poison` run (for a sweep, each pair's"
                         " record in <out>.json has its own crafting.checks)")
    crafting = payload["crafting"]
    checks, budget = crafting["checks"], crafting["max_collateral"]
    if not checks:
        raise SystemExit(f"{source}: no measurements logged (the paper's fixed objective has no budget)")
    thirds(checks, budget)

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    steps = [c["iteration"] for c in checks]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 5.5))
    top.plot(steps, [100 * c["asr"] for c in checks], color="tab:red")
    top.set_ylabel("attack success on the check (%)")
    bottom.plot(steps, [100 * c["collateral"] for c in checks], color="tab:blue", label="collateral, mean")
    bottom.plot(steps, [100 * c["collateral_bound"] for c in checks], color="tab:blue", linestyle="--",
                label="its 95 % upper bound")
    bottom.axhline(100 * budget, color="black", linewidth=0.8, label="budget")
    bottom.set_ylabel("points")
    bottom.set_xlabel("outer iteration")
    bottom.legend(loc="upper left", fontsize=8)
    dual = bottom.twinx()
    dual.plot(steps, [c["lambda"] for c in checks], color="tab:green")
    dual.set_ylabel("λ", color="tab:green")
    for axes in (top, bottom):
        axes.axvline(crafting["iteration"], color="grey", linestyle=":")
    top.set_title(f"kept: iteration {crafting['iteration']}, {100 * crafting['train_asr']:.1f} % on the check,"
                  f" bound {100 * crafting['train_collateral_bound']:.2f} points", fontsize=10)
    figure.tight_layout()
    figure.savefig(picture, dpi=110)
    print(f"wrote {picture}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python benchmarks/check_trace.py POISON_JSON_OUTPUT PICTURE.png")
    main(sys.argv[1], sys.argv[2])
