"""Walkthrough: distil a dataset, evaluate it, export it, and reload it in your own training loop.

Runs offline on the embedded ``digits`` set in about a minute on 2 CPU cores:

    python examples/distill_export_reload.py [--iterations 40] [--momentum 0.5] [--out distilled/walkthrough.safetensors]

Steps:
1. distil with the library API (the same code path as ``ddsec distill``);
2. evaluate on held-out random initialisations;
3. export the distilled set as safetensors;
4. reload it with nothing but ``safetensors``-backed ``load_distilled`` and train a fresh LeNet
   with a plain PyTorch loop: for each inner step ``t``, one SGD step on batch ``t mod S`` with the
   learned step size ``lrs[t]`` (and, for sets distilled with ``--momentum``, the learned momentum
   ``momenta[t]``) — exactly the procedure the set was distilled for.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from ddsec.data import load_dataset
from ddsec.distill import DistillConfig, prepare_distill, run_distill
from ddsec.export import DistilledSet, load_distilled, save_distilled
from ddsec.models_zoo import create_model


def train_with_distilled(model: torch.nn.Module, dset: DistilledSet) -> torch.nn.Module:
    """Train ``model`` in place with ``dset`` (images ``[S, N, C, H, W]``, step sizes and optional
    momenta ``[T]``): ``v ← μ_t·v + g``, ``θ ← θ − η_t·v`` (``μ_t = 0`` without momenta); returns it."""
    steps = dset.images.shape[0]
    momenta = [0.0] * dset.lrs.numel() if dset.momenta is None else dset.momenta.tolist()
    velocity = [torch.zeros_like(p) for p in model.parameters()]
    for t, (lr, momentum) in enumerate(zip(dset.lrs.tolist(), momenta)):
        images, labels = dset.images[t % steps], dset.labels[t % steps]
        loss = F.cross_entropy(model(images), labels)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, v, g in zip(model.parameters(), velocity, grads):
                v.mul_(momentum).add_(g)
                p -= lr * v
    return model


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model(images).argmax(1) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--out", default="distilled/walkthrough.safetensors")
    parser.add_argument("--momentum", type=float, default=0.0, help="initial learned inner momentum (0: plain SGD)")
    args = parser.parse_args()

    # 1-2. Distil and evaluate on held-out models.
    cfg = DistillConfig(dataset="digits", model="lenet", iterations=args.iterations, momentum=args.momentum,
                        eval_models=10)
    outcome = run_distill(prepare_distill(cfg))
    summary = outcome.evaluation.summary()
    print(f"distilled in {outcome.seconds:.0f} s; held-out accuracy {100 * summary['acc_mean']:.1f}"
          f" ± {100 * summary['acc_std']:.1f} % over {summary['models']} fresh LeNets")

    # 3. Export.
    save_distilled(args.out, outcome.distilled)
    print(f"exported {args.out}")

    # 4. Reload and train a fresh LeNet (xavier init, as distilled for) in a plain loop.
    test = load_dataset("digits", train=False)
    model = create_model("lenet", num_classes=10, in_chans=1, image_size=28, init="xavier", seed=12345).eval()
    dset = load_distilled(args.out)
    before = accuracy(model, test.images, test.labels)
    train_with_distilled(model, dset)
    after = accuracy(model, test.images, test.labels)
    print(f"your own loop: test accuracy {100 * before:.1f} % -> {100 * after:.1f} % after {dset.lrs.numel()} steps"
          f" on {dset.images.shape[0] * dset.images.shape[1]} distilled images")


if __name__ == "__main__":
    main()
