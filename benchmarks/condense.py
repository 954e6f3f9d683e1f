"""Condensation benchmark: accuracy of DC / DSA / DM sets against outer iterations, and time taken.

Runs one ``ddsec.condense`` configuration (the same code as ``ddsec distill --method …``) and,
as soon as the run reaches each iteration of ``--eval-at``, evaluates its synthetic images with
the train-epochs protocol (fresh ConvNets, SGD momentum 0.9, weight decay 5e-4, lr 0.01 ÷ 10 at
half the epochs, the config's evaluation augmentation: the DSA strategy for dsa/dm, DC's own
crop/scale/rotate ``dc`` for DC on MNIST) on a fixed random subset of the test split. Prints one
line per snapshot with the wall-clock of condensation (evaluation excluded; after ``--resume``,
this process's only) and of evaluation, so a run stopped early still reports every snapshot it
passed. ``--checkpoint`` / ``--resume`` continue a run in another process (e.g. a later GPU
lease); ``--evaluate-checkpoint`` evaluates a checkpoint's images (e.g. under another
``--eval-augment``).

    DDSEC_DATA=../shared/data python benchmarks/condense.py --method dc --ipc 1 --eval-at 0,10,20
    python benchmarks/condense.py --method dc --ipc 10 --batch-sampling kmeans --clusters 10 \\
        --feature-arch lenet --feature-model lenet-mnist.safetensors --train-feature-steps 300

With ``--train-feature-steps N`` a missing ``--feature-model`` is first trained (Adam, N steps,
the zoo's recipe) and saved there.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--method", default="dc", choices=("dc", "dsa", "dm"))
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--eval-at", default="0,10,20", help="iterations whose images are evaluated (the last is the run's length)")
    p.add_argument("--batch-real", type=int, default=256)
    p.add_argument("--outer-loop", type=int, default=None)
    p.add_argument("--inner-loop", type=int, default=None)
    p.add_argument("--eval-models", type=int, default=3)
    p.add_argument("--eval-epochs", type=int, default=None)
    p.add_argument("--eval-augment", default=None,
                   help="DSA strategy the evaluation models train with (default: the method's own for the dataset)")
    p.add_argument("--test-images", type=int, default=0, help="random test subset (0: the whole test split)")
    p.add_argument("--batch-sampling", default="random", choices=("random", "kmeans"))
    p.add_argument("--clusters", type=int, default=None)
    p.add_argument("--feature-layer", default=None)
    p.add_argument("--feature-arch", default=None)
    p.add_argument("--feature-model", default=None)
    p.add_argument("--train-feature-steps", type=int, default=None)
    p.add_argument("--mix-after", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint the run here every 10 iterations and on Ctrl-C / SIGINT")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed at --checkpoint")
    p.add_argument("--evaluate-checkpoint", action="store_true",
                   help="only evaluate the images checkpointed at --checkpoint (same settings as the run)")
    args = p.parse_args()
    if (args.resume or args.evaluate_checkpoint) and args.checkpoint is None:
        p.error("--resume and --evaluate-checkpoint need --checkpoint PATH")
    return args


def train_feature_model(path: Path, arch: str, dataset: str, steps: int, seed: int) -> None:
    """Train one ``arch`` on ``dataset`` with the zoo's recipe and save its weights to ``path``."""
    from ddsec.data import load_dataset
    from ddsec.distill import build_model
    from ddsec.engine import select
    from ddsec.models_zoo import save_weights
    from ddsec.models_zoo.train import TrainRecipe, population_accuracy, train_group

    train, test = load_dataset(dataset, train=True), load_dataset(dataset, train=False)
    model = build_model(arch, train)
    start = time.perf_counter()
    params = train_group(model, train, [seed], TrainRecipe(steps=steps), batching="loop")
    accuracy = float(population_accuracy(model, params, test)[0])
    save_weights(select(params, 0), path)
    print(f"feature model: {arch} trained {steps} Adam steps on {dataset} in {time.perf_counter() - start:.1f} s,"
          f" test accuracy {100 * accuracy:.2f} % -> {path}", flush=True)


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    from ddsec.condense import CondenseConfig, condense, prepare_condense
    from ddsec.condense.protocol import evaluate_set
    from ddsec.condense.run import build_step, initial_images
    from ddsec.engine import class_major_labels, load_checkpoint

    eval_at = sorted({int(x) for x in args.eval_at.split(",")})
    if args.train_feature_steps and args.feature_model and not Path(args.feature_model).exists():
        train_feature_model(Path(args.feature_model), args.feature_arch, args.dataset, args.train_feature_steps, args.seed)
    kmeans = args.batch_sampling == "kmeans"
    cfg = CondenseConfig(
        method=args.method, dataset=args.dataset, ipc=args.ipc, iterations=max(1, eval_at[-1]), batch_real=args.batch_real,
        outer_loop=args.outer_loop, inner_loop=args.inner_loop, eval_models=args.eval_models,
        eval_epochs=args.eval_epochs, eval_augment=args.eval_augment, batch_sampling=args.batch_sampling,
        clusters=args.clusters,
        feature_layer=args.feature_layer, feature_arch=args.feature_arch if kmeans else None,
        feature_model=args.feature_model, mix_after=args.mix_after, seed=args.seed, device=args.device,
    )
    start = time.perf_counter()
    cache = Path(args.feature_model).with_suffix(".clusters") if kmeans else None
    job = prepare_condense(cfg, cluster_cache=cache)
    prepared = time.perf_counter() - start
    augmentation = cfg.eval_augment
    print(f"config: {args.method} ipc {cfg.ipc} on {cfg.dataset}, {cfg.model}, batch_real {cfg.batch_real},"
          f" lr_img {cfg.lr_img}, outer/inner {cfg.outer_loop}/{cfg.inner_loop}, DSA {cfg.dsa_strategy},"
          f" sampling {cfg.batch_sampling}" + (f" (k={cfg.clusters}, {cfg.feature_arch}:{cfg.feature_layer},"
                                               f" mix_after {cfg.mix_after}, cached {job.clusters_cached})" if kmeans else "")
          + f"; {args.threads} thread(s); data/model/clusters ready in {prepared:.1f} s", flush=True)

    test = job.test
    subset = (torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[: args.test_images]
              if args.test_images else torch.arange(len(test)))
    test_subset = replace(test, images=test.images[subset], labels=test.labels[subset])
    labels = class_major_labels(test.num_classes, cfg.ipc, 1)
    evaluating = 0.0

    def report(iteration: int, images: torch.Tensor, condensation: float | None) -> None:
        nonlocal evaluating
        t0 = time.perf_counter()
        result = evaluate_set(job.model, job.init, images.unsqueeze(0), labels, test_subset,
                              n_models=cfg.eval_models, epochs=cfg.eval_epochs, augmentation=augmentation,
                              seed=cfg.seed + 1_000_003)
        s = result.summary()
        evaluating += time.perf_counter() - t0
        print(f"RESULT {args.method} ipc {cfg.ipc} sampling {cfg.batch_sampling} iteration {iteration}:"
              f" {100 * s['acc_mean']:.2f} ± {100 * s['acc_std']:.2f} % ({s['models']} models × {cfg.eval_epochs} epochs,"
              f" augmentation {augmentation}, {len(subset)} test images; before training {100 * s['acc_before_mean']:.1f} %)"
              f" | condensation {'(checkpoint)' if condensation is None else f'{condensation:.1f} s'}"
              f" | evaluation {time.perf_counter() - t0:.1f} s", flush=True)

    if args.evaluate_checkpoint:
        saved = load_checkpoint(args.checkpoint, test.images.device)
        if saved.fingerprint != cfg.fingerprint():
            raise SystemExit(f"{args.checkpoint} was written with other settings; pass the run's own ARGS")
        report(saved.iteration, saved.state["images"], None)
        return

    initial = initial_images(job)
    if 0 in eval_at and not args.resume:
        report(0, initial, 0.0)
    start, evaluating = time.perf_counter(), 0.0

    def keep(progress) -> None:
        if progress.iteration in eval_at:
            condensation = time.perf_counter() - start - evaluating
            print(f"  iteration {progress.iteration}: loss {progress.loss:.4f}, {condensation:.1f} s", flush=True)
            report(progress.iteration, progress.images, condensation)

    if eval_at[-1] > 0:
        condense(build_step(job), initial, iterations=eval_at[-1], seed=cfg.seed, fingerprint=cfg.fingerprint(),
                 checkpoint_path=args.checkpoint, resume=args.resume, on_progress=keep)

if __name__ == "__main__":
    main()
