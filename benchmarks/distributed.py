"""Scale-out benchmark: one process vs ``torchrun`` processes, side by side in one run.

Two workloads, each run as ``ddsec`` commands in fresh processes with the same total number of
threads (``--threads``, split evenly over the processes):

* outer iterations of ``ddsec distill`` (the MNIST random-init recipe: LeNet, 10 steps × 3
  epochs × 1 image per class, real batch 1024) with ``--models`` initial models per iteration
  in total (``--models / nproc`` per process), timed by the command's own ``seconds`` (the
  distillation loop only, not data loading or evaluation);
* ``ddsec zoo train`` of ``--population`` LeNets (plus a held-out shard per process) for ``--zoo-steps`` Adam steps each, timed the
  same way (training and per-model test accuracy, not start-up).

Configurations alternate (1, N, 1, N, …) for ``--repeats`` rounds so that a drift in machine
load hits both; the table gives each configuration's median and the speed-up.

    DDSEC_DATA=../shared/data python benchmarks/distributed.py            # MNIST, ~10 min on 2 cores
    python benchmarks/distributed.py --dataset digits --iterations 5      # quick, offline
    python benchmarks/distributed.py --device cuda --nproc 1              # a GPU: compare with --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def ddsec(nproc: int, threads: int, args: list[str], zoo: str) -> float:
    """Run ``ddsec ARGS --json`` on ``nproc`` processes; the ``seconds`` it reports."""
    launcher = [sys.executable, "-m", "ddsec"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m", "ddsec"]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, threads // nproc)), DDSEC_ZOO=zoo)
    run = subprocess.run([*launcher, *args, "--json", "--quiet"], env=env, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"command failed ({' '.join(args)}):\n{run.stderr[-2000:]}")
    return float(json.loads(run.stdout.strip().splitlines()[-1])["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the distributed configuration")
    parser.add_argument("--threads", type=int, default=2, help="threads in total, split over the processes")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--models", type=int, default=4, help="initial models per outer iteration, in total")
    parser.add_argument("--population", type=int, default=20, help="LeNets trained by zoo train")
    parser.add_argument("--zoo-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.models % args.nproc or args.population % args.nproc:
        sys.exit("--models and --population must be multiples of --nproc")

    configs = sorted({1, args.nproc})
    group = max(1, args.population // args.nproc // 2)  # two shards per process: balanced work
    times: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats):
            for nproc in configs:
                distill = ["distill", "--dataset", args.dataset, "--model", "lenet", "--steps", "10", "--epochs", "3",
                           "--batch-size", "1024", "--iterations", str(args.iterations), "--n-models",
                           str(args.models // nproc), "--eval-models", "1", "--eval-every", str(10**9),
                           "--device", args.device, "--out", f"{tmp}/set-{nproc}-{round_}.safetensors"]
                times.setdefault(("outer iterations", nproc), []).append(ddsec(nproc, args.threads, distill, tmp))
                zoo = ["zoo", "train", "--dataset", args.dataset, "--model", "lenet", "--count", str(args.population),
                       "--heldout", str(group * args.nproc), "--group", str(group),
                       "--steps", str(args.zoo_steps), "--name", f"bench-{nproc}-{round_}", "--device", args.device]
                times.setdefault(("population training", nproc), []).append(ddsec(nproc, args.threads, zoo, tmp))

    print(f"# {args.dataset}, device {args.device}, {args.threads} threads in total, median of {args.repeats} rounds")
    print("| workload | processes × threads | seconds | throughput | speed-up |")
    print("|---|---|---|---|---|")
    for workload, count, unit in (("outer iterations", args.iterations, "iterations/s"),
                                  ("population training", args.population + group * args.nproc, "models/s")):
        base = statistics.median(times[(workload, 1)])
        for nproc in configs:
            seconds = statistics.median(times[(workload, nproc)])
            print(f"| {workload} | {nproc} × {max(1, args.threads // nproc)} | {seconds:.1f} |"
                  f" {count / seconds:.3f} {unit} | {base / seconds:.2f}× |")


if __name__ == "__main__":
    main()
