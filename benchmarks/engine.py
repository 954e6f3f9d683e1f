"""Engine benchmark: seconds per outer iteration and peak memory, side by side in one run.

Cases (the foundation issue's):
  (a) LeNet, MNIST-shaped 1×28×28, 10 steps × 3 epochs × 10 images, real batch 1024;
  (b) AlexCifarNet, CIFAR-shaped 3×32×32, 10 steps × 3 epochs × 10 images, real batch 256;
  (c) the adaptation issue's AlexNet at 224 px (random weights), 20 classes (PASCAL-VOC), 1 step ×
      3 epochs × 20 images, real batch 64, one fixed model.
For each: ``hvp`` (recompute), ``hvp`` keeping step graphs, and ``autograd``, over 4 sampled
models (one for (c)) with ``vmap`` and with a Python ``loop`` (only ``loop`` for (c)).

``--only memory``: the memory of the checkpointed back-gradient pass on (b) with one model:
``hvp`` keeping every ``θ_t``, ``hvp`` keeping every ``⌈√T⌉``-th (``theta_every="auto"``) and
``autograd``, with their peak ratios (``--epochs`` changes ``T`` to see how they scale).

``--only compile``: the compiled back-gradient pass (``compile=True``) on (a), in one process with
interleaved repeats (every repeat samples one population and runs each variant on it): eager
and compiled ``hvp`` (``batching="auto"``: the steps vmapped, the outer loss looped on CPU), each
recomputing ``G_t`` on the way back and keeping it (``keep_graphs``), eager ``hvp`` with
everything vmapped (the engine before ``auto`` looped the outer loss), and the reference-style
loop (``hvp`` keeping each step's graph, the models one after another: one HVP per step, as the
original code does); seconds per
outer iteration, their ratios, the largest relative gradient difference from eager, and the
compile time of the first call, in this process (a fresh, empty inductor cache) and in a second
process reading the cache the first wrote.

``--only batching``: the forward and backward of a population of 4 models on one shared batch
(the outer loss's work), vmapped and looped, for LeNet, AlexCifarNet and an MLP at 16 … 1024
images: the measurement behind ``batching="auto"`` (:func:`ddsec.engine.resolve_batching`).

``--only precision``: on (a), ``--iters`` draws of the models, the eager ``hvp`` gradients with
the models vmapped and looped, in float32 and in float64: their largest relative difference per
draw (how far float32 rounding, amplified over the ``T = 30`` inner steps, moves them apart).

Each configuration of the other parts runs in a fresh subprocess so that its peak memory is its own: the figure is
the rise of the process's resident-set high-water mark (``ru_maxrss``) over its RSS just before
the first outer iteration. ``--only memory`` on CPU also reports the peak of live tensor bytes
(the allocator's, from the profiler's memory events during a second iteration), free of what
``malloc`` keeps cached. On CUDA both are ``torch.cuda.max_memory_allocated``. Times are the mean
of ``--iters`` iterations after one warm-up.

    python benchmarks/engine.py                 # everything (a few minutes on 2 cores)
    python benchmarks/engine.py --cases a --iters 2
    python benchmarks/engine.py --only memory --iters 1
    python benchmarks/engine.py --only compile --iters 5
    python benchmarks/engine.py --only precision --iters 5
    python benchmarks/engine.py --only batching --iters 3
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import os
import subprocess
import sys
import tempfile
import time

CASES = {
    "a": dict(model="lenet", shape=(1, 28, 28), steps=10, epochs=3, ipc=1, batch=1024),
    "b": dict(model="alexcifarnet", shape=(3, 32, 32), steps=10, epochs=3, ipc=1, batch=256),
    "c": dict(model="alexnet", shape=(3, 224, 224), steps=1, epochs=3, ipc=1, batch=64, classes=20, models=1,
              batchings=("loop",)),
}
VARIANTS = [("hvp", False), ("hvp", True), ("autograd", False)]
MEMORY_VARIANTS = [("hvp", None), ("hvp", "auto"), ("autograd", None)]  # (mode, theta_every) on (b), one model
COMPILE_VARIANTS = {  # label: meta_grad keywords, on (a)
    "eager hvp": dict(),
    "compiled hvp": dict(compile=True),
    "eager kept": dict(keep_graphs=True),
    "compiled kept": dict(compile=True, keep_graphs=True),
    "eager all vmap": dict(batching="vmap"),
    "reference": dict(batching="loop", keep_graphs=True),
}
BATCHING_MODELS = {"lenet": (1, 28, 28), "alexcifarnet": (3, 32, 32), "mlp": (1, 28, 28)}
BATCHING_SIZES = (16, 64, 256, 1024)


def _rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() // 1024


def _live_peak_mib(run) -> float:
    """The peak rise of live CPU tensor bytes while ``run()`` runs, from the profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def worker(case: str, mode: str, keep: bool, batching: str, iters: int, models: int, device: str = "cpu",
           theta_every: int | str | None = None, epochs: int | None = None, live: bool = False) -> dict:
    """One configuration in this process: seconds per iteration and peak MiB (GPU memory on CUDA),
    and with ``live`` on CPU the peak of live tensor MiB (see :func:`_live_peak_mib`)."""
    import torch

    from ddsec.engine import RandomInit, SyntheticSet, meta_grad
    from ddsec.models_zoo import create_model

    spec = CASES[case]
    classes, models = spec.get("classes", 10), spec.get("models", models)
    gen = torch.Generator().manual_seed(0)
    model = create_model(spec["model"], num_classes=classes, in_chans=spec["shape"][0],
                         image_size=spec["shape"][1]).eval().to(device)
    synthetic = SyntheticSet.create(num_classes=classes, ipc=spec["ipc"], steps=spec["steps"],
                                    epochs=epochs or spec["epochs"], image_shape=spec["shape"], init_lr=0.01,
                                    generator=gen, device=device)
    x = torch.randn(spec["batch"], *spec["shape"], generator=gen).to(device)
    y = torch.randint(0, classes, (spec["batch"],), generator=gen).to(device)
    cuda = device.startswith("cuda")
    init = RandomInit(model, "xavier")

    def one() -> None:
        meta_grad(model, init.sample(models, gen), synthetic, x, y, mode=mode, keep_graphs=keep, theta_every=theta_every,
                  batching=batching)
        if cuda:
            torch.cuda.synchronize()

    base = torch.cuda.memory_allocated() // 1024 if cuda else _rss_kib()
    one()  # warm-up; peak memory of an iteration is reached here already
    top = torch.cuda.max_memory_allocated() // 1024 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {"peak_mib": (top - base) / 1024}
    if live:
        result["live_mib"] = result["peak_mib"] if cuda else _live_peak_mib(one)
    start = time.perf_counter()
    for _ in range(iters):
        one()
    return result | {"seconds": (time.perf_counter() - start) / iters}


def _spawn(args: argparse.Namespace, case: str, mode: str, keep: bool, batching: str, models: int, *extra: str) -> dict:
    """One configuration in a fresh subprocess (see :func:`worker`); ``extra``: more worker flags."""
    out = subprocess.run(
        [sys.executable, __file__, "--iters", str(args.iters), "--models", str(models), "--device", args.device,
         *extra, "--worker", case, mode, "1" if keep else "0", batching],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(args: argparse.Namespace) -> None:
    """``--only memory``: (b) with one model: hvp keeping every θ_t, hvp keeping every ⌈√T⌉-th, autograd."""
    spec = CASES["b"]
    epochs = args.epochs or spec["epochs"]
    steps = spec["steps"] * epochs
    images = spec.get("classes", 10) * spec["ipc"]
    print(f"(b) {spec['model']}, {spec['steps']} steps × {epochs} epochs × {images} images (T = {steps},"
          f" auto k = {math.ceil(math.sqrt(steps))}), real batch {spec['batch']}")
    print(f"{'mode':<10}{'theta_every':<13}{'s/iter':>9}{'peak MiB':>10}{'live MiB':>10}")
    rows = {}
    for mode, every in MEMORY_VARIANTS:
        extra = ["--live", "--epochs", str(epochs), *([] if every is None else ["--theta-every", every])]
        rows[mode, every] = result = _spawn(args, "b", mode, False, "vmap", 1, *extra)
        print(f"{mode:<10}{str(every or 'all'):<13}{result['seconds']:>9.3f}{result['peak_mib']:>10.0f}"
              f"{result['live_mib']:>10.0f}", flush=True)
    print()
    auto = rows["autograd", None]
    for every in (None, "auto"):
        hvp = rows["hvp", every]
        print(f"hvp (theta_every={every}) / autograd: peak memory {hvp['peak_mib'] / auto['peak_mib']:.2f},"
              f" live tensors {hvp['live_mib'] / auto['live_mib']:.2f}, time {hvp['seconds'] / auto['seconds']:.2f}")


def _case_a(device: str):
    """``(model, synthetic, x_real, y_real, p(θ0), generator)`` of case (a)."""
    import torch

    from ddsec.engine import RandomInit, SyntheticSet
    from ddsec.models_zoo import create_model

    spec = CASES["a"]
    gen = torch.Generator().manual_seed(0)
    model = create_model(spec["model"], num_classes=10, in_chans=spec["shape"][0],
                         image_size=spec["shape"][1]).eval().to(device)
    synthetic = SyntheticSet.create(num_classes=10, ipc=spec["ipc"], steps=spec["steps"], epochs=spec["epochs"],
                                    image_shape=spec["shape"], init_lr=0.01, generator=gen, device=device)
    x = torch.randn(spec["batch"], *spec["shape"], generator=gen).to(device)
    y = torch.randint(0, 10, (spec["batch"],), generator=gen).to(device)
    return model, synthetic, x, y, RandomInit(model, "xavier"), gen


def first_compiled_call(models: int, device: str) -> float:
    """Seconds of the first ``compile=True`` call on (a) in this process (compiling, or reading the cache)."""
    import torch

    from ddsec.engine import meta_grad

    model, synthetic, x, y, init, gen = _case_a(device)
    start = time.perf_counter()
    meta_grad(model, init.sample(models, gen), synthetic, x, y, **COMPILE_VARIANTS["compiled hvp"])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compiled(args: argparse.Namespace) -> None:
    """``--only compile``: eager, compiled and reference-style hvp on (a), interleaved in this process."""
    import torch

    from ddsec.engine import meta_grads

    spec = CASES["a"]
    print(f"(a) {spec['model']}, {spec['steps']} steps × {spec['epochs']} epochs × 10 images, real batch"
          f" {spec['batch']}, float32; inductor cache {os.environ['TORCHINDUCTOR_CACHE_DIR']} (fresh)")
    cuda = args.device.startswith("cuda")
    first = first_compiled_call(args.models, args.device)
    model, synthetic, x, y, init, gen = _case_a(args.device)
    for keywords in COMPILE_VARIANTS.values():  # warm-up
        meta_grads(model, init.sample(args.models, gen), synthetic, x, y, **keywords)
    seconds = {label: [] for label in COMPILE_VARIANTS}
    worst = {label: 0.0 for label in COMPILE_VARIANTS}
    for _ in range(args.iters):
        params = init.sample(args.models, gen)
        results = {}
        for label, keywords in COMPILE_VARIANTS.items():
            start = time.perf_counter()
            results[label] = meta_grads(model, params, synthetic, x, y, **keywords)
            if cuda:
                torch.cuda.synchronize()
            seconds[label].append(time.perf_counter() - start)
        for label, result in results.items():
            want_all = results["eager hvp"]
            for got, want in ((result.images, want_all.images), (result.learned["lr"], want_all.learned["lr"])):
                worst[label] = max(worst[label], float((got - want).abs().max() / want.abs().max()))
    mean = {label: sum(values) / len(values) for label, values in seconds.items()}
    print(f"{'variant':<16}{'s/iter':>9}{'max rel diff vs eager':>24}")
    for label in COMPILE_VARIANTS:
        print(f"{label:<16}{mean[label]:>9.3f}{worst[label]:>24.1e}")
    print(f"compiled/eager time {mean['compiled hvp'] / mean['eager hvp']:.2f} (recomputed G_t),"
          f" {mean['compiled kept'] / mean['eager kept']:.2f} (kept); reference/compiled"
          f" {mean['reference'] / mean['compiled hvp']:.2f} (recomputed), {mean['reference'] / mean['compiled kept']:.2f}"
          f" (kept); reference/eager {mean['reference'] / mean['eager hvp']:.2f};"
          f" all vmap/eager {mean['eager all vmap'] / mean['eager hvp']:.2f}")
    again = subprocess.run(
        [sys.executable, __file__, "--models", str(args.models), "--device", args.device, "--first-compiled-call"],
        check=True, capture_output=True, text=True,
    )
    cached = float(again.stdout.strip().splitlines()[-1])
    print(f"first compiled call (compiling included): {first:.1f} s in this process (empty cache),"
          f" {cached:.1f} s in a second process (reading the cache)")


def precision(args: argparse.Namespace) -> None:
    """``--only precision``: loop against vmap on (a), float32 and float64, one line per draw."""
    import torch

    from ddsec.engine import meta_grads

    model, synthetic, x, y, init, gen = _case_a(args.device)
    print(f"(a) {CASES['a']['model']}, eager hvp, max |vmap − loop| / max |loop| per draw of {args.models} models")
    for draw in range(args.iters):
        params = init.sample(args.models, gen)
        cells = []
        for dtype in (torch.float32, torch.float64):
            setting = synthetic.replaced(images=synthetic.images.to(dtype),
                                         learned={k: v.to(dtype) for k, v in synthetic.learned.items()})
            typed = {k: v.to(dtype) for k, v in params.items()}
            vmapped, looped = (meta_grads(model.to(dtype), typed, setting, x.to(dtype), y, batching=batching)
                               for batching in ("vmap", "loop"))
            for name in ("images", "lr"):
                got, want = vmapped.fields()[name], looped.fields()[name]
                cells.append(f"{str(dtype).removeprefix('torch.')} {name} {float((got - want).abs().max() / want.abs().max()):.1e}")
        print(f"draw {draw}: " + " · ".join(cells), flush=True)


def batching_table(args: argparse.Namespace) -> None:
    """``--only batching``: loop against vmap for the forward and backward of a population on one shared batch."""
    import torch
    import torch.nn.functional as F

    from ddsec.engine import population_forward, stack_params
    from ddsec.models_zoo import create_model

    print(f"forward + backward of {args.models} models on one shared batch, best of {args.iters} (ms)")
    print(f"{'model':<14}{'images':>7}{'vmap':>10}{'loop':>10}{'loop/vmap':>11}")
    for name, shape in BATCHING_MODELS.items():
        def make():
            return create_model(name, num_classes=10, in_chans=shape[0], image_size=shape[1]).to(args.device)

        model = make().eval()
        params = stack_params([make() for _ in range(args.models)])
        forwards = {how: population_forward(model, how) for how in ("vmap", "loop")}
        for images in BATCHING_SIZES:
            x = torch.randn(images, *shape, device=args.device)
            y = torch.randint(0, 10, (images,), device=args.device).repeat(args.models)
            best = {how: math.inf for how in forwards}
            for _ in range(args.iters):
                for how, forward in forwards.items():
                    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
                    start = time.perf_counter()
                    torch.autograd.grad(F.cross_entropy(forward(leaves, x).flatten(0, 1), y), list(leaves.values()))
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    best[how] = min(best[how], time.perf_counter() - start)
            print(f"{name:<14}{images:>7}{best['vmap'] * 1e3:>10.1f}{best['loop'] * 1e3:>10.1f}"
                  f"{best['loop'] / best['vmap']:>11.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="ab")
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (peak memory is then GPU memory)")
    parser.add_argument("--only", choices=["memory", "compile", "precision", "batching"],
                        help="run only this part (memory: the checkpointed hvp on (b); compile: the compiled hvp on (a);"
                             " precision: loop vs vmap on (a) in float32 and float64; batching: loop vs vmap on one"
                             " shared batch)")
    parser.add_argument("--epochs", type=int, help="--only memory: epochs of (b) (default 3: T = 30)")
    parser.add_argument("--worker", nargs=4, metavar=("CASE", "MODE", "KEEP", "BATCHING"), help=argparse.SUPPRESS)
    parser.add_argument("--theta-every", help=argparse.SUPPRESS)
    parser.add_argument("--live", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--first-compiled-call", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first_compiled_call:
        print(first_compiled_call(args.models, args.device))
        return
    if args.only == "compile":  # a fresh cache, so that the first call compiles; the second process reads it
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="ddsec-inductor-")
    if args.worker:
        case, mode, keep, batching = args.worker
        every = args.theta_every if args.theta_every in (None, "auto") else int(args.theta_every)
        print(json.dumps(worker(case, mode, keep == "1", batching, args.iters, args.models, args.device, every,
                                args.epochs, args.live)))
        return

    import torch

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    models = "one model" if args.only == "memory" else f"{args.models} models"
    timing = "" if args.only == "precision" else f", {args.iters} timed iterations after 1 warm-up"
    print(f"torch {torch.__version__}, {where}, {models} per iteration{timing}")
    if args.only == "memory":
        memory(args)
        return
    if args.only == "compile":
        compiled(args)
        return
    if args.only == "precision":
        precision(args)
        return
    if args.only == "batching":
        batching_table(args)
        return
    print(f"{'case':<16}{'mode':<14}{'batching':<9}{'s/iter':>9}{'peak MiB':>10}")
    rows = {}
    for case in args.cases:
        for mode, keep in VARIANTS:
            for batching in CASES[case].get("batchings", ("vmap", "loop")):
                result = _spawn(args, case, mode, keep, batching, args.models)
                label = mode + ("+keep" if keep else "")
                rows[(case, label, batching)] = result
                print(f"{case + ' ' + CASES[case]['model']:<16}{label:<14}{batching:<9}"
                      f"{result['seconds']:>9.3f}{result['peak_mib']:>10.0f}", flush=True)
    print()
    for case in args.cases:
        name = f"({case}) {CASES[case]['model']}"
        batching = CASES[case].get("batchings", ("vmap",))[0]
        hvp, auto = rows[(case, "hvp", batching)], rows[(case, "autograd", batching)]
        line = (f"{name}: hvp/autograd peak memory {hvp['peak_mib'] / auto['peak_mib']:.2f}, "
                f"time {hvp['seconds'] / auto['seconds']:.2f}")
        if (case, "hvp", "loop") in rows and (case, "hvp", "vmap") in rows:
            line += f"; loop/vmap time (hvp) {rows[(case, 'hvp', 'loop')]['seconds'] / hvp['seconds']:.2f}"
        print(line)


if __name__ == "__main__":
    main()
