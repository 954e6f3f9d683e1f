"""Command-line options shared by ``distill``, ``poison``, ``adapt`` and ``zoo train``, declared once.

Options whose defaults differ between commands (steps, learning rates, …) stay with their
command; these mean and default the same everywhere.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ddsec.distill import DistillConfig
from ddsec.engine import DEFAULT_CHECKPOINT_SECONDS, require_checkpoint
from ddsec.errors import DDSecError
from ddsec.recipes import recipe_for

DATA_DIR = typer.Option(None, help="Data root (default $DDSEC_DATA, else ~/.cache/ddsec/data); for imagefolder, the tree.")
DOWNLOAD = typer.Option(False, help="Fetch a missing MNIST/USPS/SVHN/CIFAR-10 with torchvision (needs the internet).")
ZOO = typer.Option(None, help="Zoo folder (default $DDSEC_ZOO, else ~/.cache/ddsec/zoo).")
LR_STEP_SIZES = typer.Option(None, help="Adam learning rate for the raw step sizes (default --lr).")
DECAY_EVERY = typer.Option(None, help="Halve the learning rates every this many iterations.")
MODE = typer.Option(DistillConfig.mode, help="Meta-gradient: hvp (back-gradient) | autograd (reference).")
KEEP_GRAPHS = typer.Option(DistillConfig.keep_graphs, help="hvp: keep each step's graph instead of recomputing it (faster, more memory).")
THETA_EVERY = typer.Option(None, "--theta-every", metavar="K|auto", help="hvp: keep only every K-th inner θ_t and recompute"
                           " each segment's steps on the way back: memory O(√T·|θ|) instead of O(T·|θ|), slower, the same"
                           " gradients; auto: K = ⌈√T⌉; 0 (default): keep every θ_t. With --keep-graphs, the current"
                           " segment's graphs are kept. Not a run setting: a resumed run may change it.")
COMPILE = typer.Option(DistillConfig.compile, "--compile", metavar="auto|on|off", help="hvp: run each inner step's"
                       " gradient and its back-gradient product as compiled graphs (torch.compile; the first run"
                       " compiles for a minute or more, later runs read the cache); auto: on for CUDA, off on CPU."
                       " Not a run setting: a resumed run may change it.")
SEED = typer.Option(DistillConfig.seed, help="Seed of every random draw.")
DEVICE = typer.Option(DistillConfig.device, help="auto | cpu | cuda.")
RESUME = typer.Option(False, help="Continue an interrupted run from its checkpoint.")
CHECKPOINT_SECONDS = typer.Option(DEFAULT_CHECKPOINT_SECONDS, help="Checkpoint at least this often (seconds of"
                                  " wall-clock time), so a killed run loses at most this much.")
FORCE = typer.Option(False, help="Start over even if an unfinished run's checkpoint exists.")
HELDOUT_OF_BATCH = typer.Option(None, help="Held-out population (default: the one the batch was evaluated on).")
JSON = typer.Option(False, "--json", help="Print one JSON object as the last line of stdout.")
QUIET = typer.Option(False, help="No progress bars.")
EVAL_EVERY = typer.Option(None, help="Quick held-out accuracy every N iterations (default: 5 times a run; 0: never).")
BUDGET = typer.Option(None, help="Time for the distillation loop, e.g. 90s, 10m, 2h: the run times its first"
                              " iterations and sets the iteration count (and the decay points) to fill it."
                              " --iterations wins when given.")
DECAY_FRACTION = typer.Option(None, help="With --budget: halve the learning rates every this fraction of the run"
                                         " (e.g. 0.35).")
GRID_MODELS = typer.Option(5, help="Baselines: models per step-size × epochs cell and per optimized candidate.")
CANDIDATES = typer.Option(25, help="Baseline optimized: random real sets scored (the best 20% are kept).")
LEARN_LABELS = typer.Option(DistillConfig.learn_labels, help="Also learn soft labels (exported as [S, N, K] probabilities).")
MOMENTUM = typer.Option(DistillConfig.momentum, help="Inner momentum: 0 is plain SGD (the paper); in (0, 1) the inner"
                                                     " steps use SGD with a learned momentum per step, starting here.")
LR_MOMENTA = typer.Option(None, help="Adam learning rate for the raw momenta (default --lr-step-sizes, else --lr).")


def theta_every(value: str | None) -> int | str | None:
    """``--theta-every`` as the engine takes it: ``None`` (absent or 0: keep every θ_t), ``"auto"`` or ``K``.

    Raises:
        DDSecError: neither ``auto`` nor a whole number ``>= 0``.
    """
    if value is None or value == "auto":
        return value
    if not value.isdigit():
        raise DDSecError(f"--theta-every must be auto or a whole number (0: keep every θ_t), got {value!r}")
    return int(value) or None


def checkpoint_for(output: Path) -> Path:
    """Where a run writing ``output`` keeps its checkpoint."""
    return output.with_name(output.name + ".ckpt")


def output_paths(out_path: Path | None, default: Path, *, resume: bool, force: bool) -> tuple[Path, Path]:
    """``(output, checkpoint)`` for a run; refuses to silently overwrite an unfinished run's checkpoint.

    Raises:
        DDSecError: ``--out`` is not ``.safetensors``, a checkpoint exists without ``--resume``/``--force``,
            or ``--resume`` finds no checkpoint (checked before any work starts).
    """
    output = out_path or default
    if output.suffix != ".safetensors":
        raise DDSecError(f"--out must end in .safetensors, got {output}")
    checkpoint = checkpoint_for(output)
    if resume and force:
        raise DDSecError("--resume continues a run and --force starts it over: pass only one")
    if resume:
        require_checkpoint(checkpoint)
    if checkpoint.exists() and not (resume or force):
        raise DDSecError(f"an unfinished run left {checkpoint}; pass --resume to continue it or --force to start over")
    if force:
        checkpoint.unlink(missing_ok=True)
    return output, checkpoint


def eval_interval(eval_every: int | None, iterations: int | None) -> int | None:
    """``--eval-every``, checked, or its default: five quick held-out checks per run (0 turns them
    off); ``None`` when the run's length is not known yet (a budget): then the run spreads five."""
    if eval_every is None:
        return None if iterations is None else max(1, iterations // 5)
    if eval_every < 0:
        raise DDSecError(f"--eval-every must be 0 (never) or positive, got {eval_every}")
    return eval_every


def iterations_or_budget(iterations: int | None, budget: str | None, default: int,
                         default_budget: str | None = None) -> tuple[int | None, str | None, list[str]]:
    """``(iterations, budget, notes)``: an explicit ``--iterations`` wins over ``--budget`` (with a
    note); neither gives ``default_budget`` when there is one (a dataset's recipe), else
    ``default`` iterations."""
    if iterations is not None and budget is not None:
        return iterations, None, [f"--iterations {iterations} wins over --budget {budget}"]
    if iterations is None and budget is None:
        return (None, default_budget, []) if default_budget is not None else (default, None, [])
    return iterations, budget, []


def with_recipe(task: str, dataset: str, given: dict, default_iterations: int) -> tuple[dict, list[str]]:
    """``(settings, notes)``: the options of ``given`` (``None``: not given; ``iterations`` and
    ``budget`` among them) with those not given taken from ``task``'s measured recipe for
    ``dataset`` (:mod:`ddsec.recipes`), and a note naming the recipe's settings used and its source.
    Options neither given nor in the recipe are left out (the config's defaults apply)."""
    recipe = recipe_for(task, dataset)
    iterations, budget, notes = iterations_or_budget(
        given["iterations"], given["budget"], recipe.settings.get("iterations", default_iterations),
        recipe.settings.get("budget"))
    settings = {k: recipe.settings.get(k) if v is None else v for k, v in given.items()}
    settings = {k: v for k, v in settings.items() if v is not None} | {"iterations": iterations, "budget": budget}
    used = {k: v for k, v in recipe.settings.items() if settings.get(k) == v and given.get(k) is None}
    notes += [f"recipe for {dataset}: {', '.join(f'{k}={v}' for k, v in used.items())} ({recipe.source})"] if used else []
    return settings, notes
