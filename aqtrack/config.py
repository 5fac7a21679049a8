"""Configuration: nested dataclasses, the one source of truth for defaults.

Every field becomes a CLI flag (`epochs_per_round` -> `--epochs-per-round`), an MLproject parameter of
the same name and a logged MLflow param; a test keeps the three in step. Field names are unique across
sections so the flat namespace stays unambiguous. This module imports nothing heavy: `aqtrack --help`
builds its parser from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aqtrack.errors import ConfigError

OPTIMIZERS = ("adamw", "adam")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("none", "bf16", "fp16")
MISSING_POLICIES = ("interpolate", "refuse")
SVM_KERNELS = ("rbf", "linear", "poly", "sigmoid")
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def option(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A config field with its help text (shown by `--help` and in the README's config reference)."""
    return field(default=default, metadata={"help": help, "choices": choices})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_bool(text: str) -> bool:
    """A boolean setting as typed on the command line or as an MLproject parameter (`-P svm=false`)."""
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise ValueError(f"expected true or false (got {text!r})")


def show(value: Any) -> str:
    """A setting's value as the CLI and MLproject spell it: `true`, not `True`."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _check_types(settings: Any) -> None:
    """Python callers can pass anything; refuse what argparse would have refused."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        expected = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}[str(f.type)]
        if isinstance(value, bool) != (expected == (bool,)) or not isinstance(value, expected):
            raise ConfigError(f"{flag(f.name)} must be of type {f.type} (got {value!r})")


def _check(ok: bool, name: str, requirement: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{flag(name)} must be {requirement} (got {value!r})")


@dataclass
class DataConfig:
    data: str = option("synthetic", "'synthetic' (embedded, seeded) or a .npz/.csv/.parquet/.ts file")
    n_train: int = option(800, "synthetic data: number of training sequences")
    n_val: int = option(200, "synthetic data: number of validation sequences")
    n_test: int = option(200, "synthetic data: number of test sequences; 0 = no test split")
    test_fraction: float = option(
        0.2,
        "data files without a 'split': test fraction (stratified; grouped by subject when the file "
        "has subjects); 0 = no test split",
    )
    val_fraction: float = option(
        0.2, "data files without a 'split': validation fraction of what remains after the test split"
    )
    missing: str = option(
        "interpolate",
        "missing values inside recordings (NaN, skipped frames): interpolate (linear over frames) or refuse",
        choices=MISSING_POLICIES,
    )
    data_seed: int = option(0, "seed of the synthetic data and of the splits of data files")

    def __post_init__(self) -> None:
        _check_types(self)
        _check(bool(self.data), "data", "'synthetic' or a path", self.data)
        _check(self.n_train >= 1, "n_train", ">= 1", self.n_train)
        _check(self.n_val >= 1, "n_val", ">= 1", self.n_val)
        _check(self.n_test >= 0, "n_test", ">= 0 (0 = no test split)", self.n_test)
        _check(
            0.0 <= self.test_fraction < 1.0,
            "test_fraction",
            "in [0, 1) (0 = no test split)",
            self.test_fraction,
        )
        _check(0.0 < self.val_fraction < 1.0, "val_fraction", "between 0 and 1", self.val_fraction)
        _check(
            self.missing in MISSING_POLICIES, "missing", f"one of {', '.join(MISSING_POLICIES)}", self.missing
        )


@dataclass
class ModelConfig:
    hidden: int = option(64, "channels of the 1D-CNN's convolutions (features() returns 2x this)")
    dropout: float = option(0.2, "dropout before the classifier head")

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.hidden >= 1, "hidden", ">= 1", self.hidden)
        _check(0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)", self.dropout)


@dataclass
class TrainConfig:
    rounds: int = option(3, "training rounds; the cosine schedule restarts at each round")
    epochs_per_round: int = option(100, "epochs in each round")
    lr: float = option(1e-3, "peak learning rate, at the start of each cosine cycle")
    min_lr: float = option(1e-6, "floor of the cosine schedule")
    t0: int = option(0, "epochs of the first cosine cycle (CosineAnnealingWarmRestarts T_0); 0 = one round")
    t_mult: int = option(1, "growth factor of the cosine cycle length (CosineAnnealingWarmRestarts T_mult)")
    optimizer: str = option("adamw", "optimizer: adamw or adam", choices=OPTIMIZERS)
    weight_decay: float = option(1e-2, "weight decay")
    batch_size: int = option(32, "training batch size")
    max_grad_norm: float = option(1.0, "gradient clipping: max total L2 norm")
    checkpoint_interval: int = option(
        10, "epochs between periodic checkpoints (last.pt is saved every epoch)"
    )
    num_workers: int = option(0, "DataLoader worker processes (0 is safe in Jupyter)")
    seed: int = option(42, "seed of model init, dropout and data order")
    device: str = option("auto", "where to train: auto (cuda when available), cpu or cuda", choices=DEVICES)
    amp: str = option(
        "none",
        "mixed precision on CUDA: none, bf16 or fp16 (fp16 with a gradient scaler)",
        choices=PRECISIONS,
    )

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.rounds >= 1, "rounds", ">= 1", self.rounds)
        _check(self.epochs_per_round >= 1, "epochs_per_round", ">= 1", self.epochs_per_round)
        _check(self.lr > 0, "lr", "> 0", self.lr)
        _check(self.min_lr >= 0, "min_lr", ">= 0", self.min_lr)
        _check(self.min_lr <= self.lr, "min_lr", f"<= --lr ({self.lr})", self.min_lr)
        _check(self.t0 >= 0, "t0", ">= 0 (0 restarts the schedule at every round)", self.t0)
        _check(self.t_mult >= 1, "t_mult", ">= 1", self.t_mult)
        _check(self.optimizer in OPTIMIZERS, "optimizer", f"one of {', '.join(OPTIMIZERS)}", self.optimizer)
        _check(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        _check(self.batch_size >= 1, "batch_size", ">= 1", self.batch_size)
        _check(self.max_grad_norm > 0, "max_grad_norm", "> 0", self.max_grad_norm)
        _check(self.checkpoint_interval >= 1, "checkpoint_interval", ">= 1", self.checkpoint_interval)
        _check(self.num_workers >= 0, "num_workers", ">= 0", self.num_workers)
        _check(self.device in DEVICES, "device", f"one of {', '.join(DEVICES)}", self.device)
        _check(self.amp in PRECISIONS, "amp", f"one of {', '.join(PRECISIONS)}", self.amp)

    @property
    def total_epochs(self) -> int:
        return self.rounds * self.epochs_per_round


@dataclass
class SvmConfig:
    svm: bool = option(True, "after training, fit an SVM on the best network's features (--no-svm skips it)")
    svm_c: float = option(1.0, "SVM regularisation C")
    svm_kernel: str = option("rbf", "SVM kernel", choices=SVM_KERNELS)

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.svm_c > 0, "svm_c", "> 0", self.svm_c)
        _check(
            self.svm_kernel in SVM_KERNELS, "svm_kernel", f"one of {', '.join(SVM_KERNELS)}", self.svm_kernel
        )


@dataclass
class RunConfig:
    experiment: str = option("action-quality", "MLflow experiment (under `mlflow run`, MLflow's choice wins)")
    run_name: str = option("", "MLflow run name; empty = a readable generated one (renames a resumed run)")
    output_dir: str = option("outputs", "where experiment_report.json and local checkpoint copies go")
    tracking_patience: float = option(
        600.0,
        "seconds training goes on while the tracking server is unreachable (metrics and checkpoints "
        "wait locally and are sent when it is back) before it stops; 0 = stop at the first failure",
    )
    register: str = option("", "register the best network in the MLflow model registry under this name")
    system_metrics: bool = option(False, "log CPU, memory (and GPU) usage as MLflow system metrics")

    def __post_init__(self) -> None:
        _check_types(self)
        _check(bool(self.experiment), "experiment", "a non-empty name", self.experiment)
        _check(bool(self.output_dir), "output_dir", "a directory path", self.output_dir)
        _check(self.tracking_patience >= 0, "tracking_patience", ">= 0", self.tracking_patience)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "svm": SvmConfig,
    "run": RunConfig,
}

# Settings that may change when a run is resumed; all others must match the checkpoint (see `resumed`).
RESUMABLE = frozenset(
    {"rounds", "checkpoint_interval", "num_workers", "output_dir", "experiment", "run_name"}
    | {"tracking_patience", "device", "svm", "svm_c", "svm_kernel", "register", "system_metrics"}
)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    svm: SvmConfig = field(default_factory=SvmConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """Flat {field: value}: what is logged as MLflow params and stored in checkpoints."""
        return {name: getattr(getattr(self, section), name) for section, name, _ in config_fields()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Build from a flat dict; missing fields take their defaults, unknown names are refused."""
        check_known(values)
        known = {name: section for section, name, _ in config_fields()}
        grouped: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
        for name, value in values.items():
            grouped[known[name]][name] = value
        return cls(**{section: SECTIONS[section](**kw) for section, kw in grouped.items()})

    def replace(self, **changes: Any) -> Config:
        return Config.from_dict({**self.to_dict(), **changes})


def check_known(values: dict[str, Any]) -> None:
    known = [name for _, name, _ in config_fields()]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")


def config_fields() -> Iterator[tuple[str, str, dataclasses.Field]]:
    """(section, name, field) for every setting, in declaration order."""
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            yield section, f.name, f


def resumed(saved: Config, given: dict[str, Any], *, defaults_unset: bool = False) -> Config:
    """The config of a resumed run: the checkpoint's, plus the `RESUMABLE` settings the user gave.

    Changing any other setting is refused: the checkpoint's optimizer, schedule and data would no
    longer describe the run. `mlflow run` passes every MLproject parameter, typed or not, so under it
    (`defaults_unset`) a value equal to its default counts as not given.
    """
    check_known(given)
    defaults, current = Config().to_dict(), saved.to_dict()
    given = {k: v for k, v in given.items() if v != current[k] and not (defaults_unset and v == defaults[k])}
    conflicts = [
        f"{flag(k)}={v!r} (the run has {current[k]!r})" for k, v in given.items() if k not in RESUMABLE
    ]
    if conflicts:
        raise ConfigError(
            f"cannot change {', '.join(conflicts)} when resuming; only "
            f"{', '.join(flag(k) for k in sorted(RESUMABLE))} may change: start a new run instead"
        )
    return saved.replace(**given)
