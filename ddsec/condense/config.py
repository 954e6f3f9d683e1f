"""Settings of one condensation run (``ddsec distill --method dc|dsa|dm``), with the published defaults.

Zhao, Mopuri and Bilen (DC, arXiv 2006.05929) and Zhao and Bilen (DSA, arXiv 2102.08259): SGD
on the images with lr 0.1 and momentum 0.5, network SGD with lr 0.01, 256 real images per
class, 1000 iterations, loops by images per class. Zhao and Bilen (DM, arXiv 2110.04181): image lr
1.0, 20000 iterations, DSA on. Evaluation as in the reference code: DSA and DM sets train their
evaluation models with their DSA strategy, DC sets on MNIST with DC's own crop/scale/rotate
(``dc``), other DC sets without augmentation; 1000 epochs with augmentation, 300 without.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ddsec.budget import parse_duration
from ddsec.condense.augment import DC_AUGMENTATION, default_strategy, evaluation_augment, parse_strategy
from ddsec.features import PENULTIMATE
from ddsec.condense.gradient_matching import default_loops
from ddsec.errors import DDSecError

METHODS = ("dc", "dsa", "dm")
SAMPLINGS = ("random", "kmeans")
IMAGE_INITS = ("real", "noise")
_DEFAULTS = {  # method → (iterations, image lr)
    "dc": (1000, 0.1),
    "dsa": (1000, 0.1),
    "dm": (20000, 1.0),
}
DC_EVAL_AUGMENT = {"mnist": DC_AUGMENTATION}  # dataset → the reference's DC evaluation augmentation
_RESUMABLE = ("data_dir", "download", "device", "iterations", "eval_models", "eval_epochs", "eval_augment",
              "checkpoint_every")


@dataclass(frozen=True)
class CondenseConfig:
    """Every setting of one condensation run; stored as JSON in the exported file.

    ``None`` fields take the method's published default when the config is built, except
    ``iterations`` under a time ``budget`` (the loop fills the budget; an explicit count wins over
    it). Validation raises :class:`DDSecError` naming the command-line option at fault.
    """

    method: str = "dc"
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    model: str = "convnet3"
    ipc: int = 1
    image_init: str = "real"
    init_scheme: str = "default"
    iterations: int | None = None
    budget: str | None = None
    batch_real: int = 256
    lr_img: float | None = None
    momentum_img: float = 0.5
    lr_net: float = 0.01
    batch_train: int = 256
    outer_loop: int | None = None
    inner_loop: int | None = None
    dsa_strategy: str | None = None
    batch_sampling: str = "random"
    clusters: int | None = None
    feature_layer: str | None = None
    feature_model: str | None = None
    feature_arch: str | None = None
    mix_after: int | None = None
    seed: int = 0
    device: str = "auto"
    eval_models: int = 5
    eval_epochs: int | None = None
    eval_augment: str | None = None
    checkpoint_every: int = 10

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DDSecError(f"--method must be one of dd, {', '.join(METHODS)}, got {self.method!r}")
        self._check_sampling()
        if self.budget is not None:
            parse_duration(self.budget)
        if self.method == "dm" and (self.outer_loop is not None or self.inner_loop is not None):
            raise DDSecError("--outer-loop and --inner-loop apply to --method dc|dsa (DM trains no network)")
        if self.method == "dc" and self.dsa_strategy not in (None, "none"):
            raise DDSecError("--dsa-strategy applies to --method dsa|dm (dc is gradient matching without augmentation)")
        iterations, lr_img = _DEFAULTS[self.method]
        outer, inner = default_loops(max(1, self.ipc))
        strategy = "none" if self.method == "dc" else self.dsa_strategy or default_strategy(self.dataset)
        parse_strategy(strategy)
        eval_augment = self.eval_augment or (
            DC_EVAL_AUGMENT.get(self.dataset.lower(), "none") if self.method == "dc" else strategy)
        evaluation_augment(eval_augment, "--eval-augment")
        kmeans = self.batch_sampling == "kmeans"
        resolved = {
            "iterations": self.iterations if self.iterations is not None or self.budget is not None else iterations,
            "budget": None if self.iterations is not None else self.budget,
            "lr_img": lr_img if self.lr_img is None else self.lr_img,
            "eval_augment": eval_augment,
            "eval_epochs": (300 if eval_augment == "none" else 1000) if self.eval_epochs is None else self.eval_epochs,
            "outer_loop": None if self.method == "dm" else outer if self.outer_loop is None else self.outer_loop,
            "inner_loop": None if self.method == "dm" else inner if self.inner_loop is None else self.inner_loop,
            "dsa_strategy": strategy,
            "clusters": (10 if self.clusters is None else self.clusters) if kmeans else None,
            "feature_layer": (self.feature_layer or PENULTIMATE) if kmeans else None,
            "feature_arch": (self.feature_arch or self.model) if kmeans else None,
        }
        for name, value in resolved.items():
            object.__setattr__(self, name, value)
        self._check_numbers()

    def _check_sampling(self) -> None:
        if self.batch_sampling not in SAMPLINGS:
            raise DDSecError(f"--batch-sampling must be one of {', '.join(SAMPLINGS)}, got {self.batch_sampling!r}")
        if self.batch_sampling == "kmeans" and self.method == "dm":
            raise DDSecError("--batch-sampling kmeans applies to --method dc|dsa (gradient matching), not dm")
        cluster_options = {"--clusters": self.clusters, "--feature-layer": self.feature_layer,
                           "--feature-model": self.feature_model, "--feature-arch": self.feature_arch,
                           "--mix-after": self.mix_after}
        if self.batch_sampling != "kmeans":
            given = [flag for flag, value in cluster_options.items() if value is not None]
            if given:
                raise DDSecError(f"{given[0]} needs --batch-sampling kmeans")
        elif self.feature_model is None:
            raise DDSecError("--batch-sampling kmeans needs --feature-model FILE: weights (.safetensors or .pth) of a"
                             " network trained on the dataset, of architecture --feature-arch (default --model)")

    def _check_numbers(self) -> None:
        at_least_one = {"--ipc": self.ipc, "--iterations": self.iterations, "--batch-size": self.batch_real,
                        "--batch-train": self.batch_train, "--eval-models": self.eval_models,
                        "--eval-epochs": self.eval_epochs, "--clusters": self.clusters,
                        "--outer-loop": self.outer_loop, "--inner-loop": self.inner_loop,
                        "--checkpoint-every": self.checkpoint_every}
        for flag, value in at_least_one.items():
            if value is not None and value < 1:
                raise DDSecError(f"{flag} must be at least 1, got {value}")
        if self.mix_after is not None and self.mix_after < 0:
            raise DDSecError(f"--mix-after must not be negative, got {self.mix_after}")
        for flag, value in {"--lr": self.lr_img, "--lr-net": self.lr_net}.items():
            if not value > 0:
                raise DDSecError(f"{flag} must be positive, got {value}")
        if not 0 <= self.momentum_img < 1:
            raise DDSecError(f"the image momentum must be in [0, 1), got {self.momentum_img}")
        if self.image_init not in IMAGE_INITS:
            raise DDSecError(f"--image-init must be one of {', '.join(IMAGE_INITS)}, got {self.image_init!r}")

    @property
    def strategy(self) -> tuple[str, ...]:
        """The DSA operations applied while condensing (empty for DC)."""
        return parse_strategy(self.dsa_strategy)

    def fingerprint(self) -> dict:
        """Settings that must not change when a run is resumed."""
        return {k: v for k, v in asdict(self).items() if k not in _RESUMABLE}
