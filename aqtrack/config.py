"""Configuration: nested dataclasses, the one source of truth for defaults.

Every field becomes a CLI flag (`epochs_per_round` -> `--epochs-per-round`), an MLproject parameter of
the same name and a logged MLflow param; a test keeps the three in step. Field names are unique across
sections so the flat namespace stays unambiguous. This module imports nothing heavy: `aqtrack --help`
builds its parser from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aqtrack.errors import ConfigError

OPTIMIZERS = ("adamw", "adam")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("none", "bf16", "fp16")
MISSING_POLICIES = ("interpolate", "refuse")
LOSO = "loso"  # --folds loso: leave one subject out, one fold per subject
SVM_KERNELS = ("rbf", "linear", "poly", "sigmoid")
CLASS_WEIGHTS = ("none", "balanced")
SELECT_BY = ("val_acc", "val_balanced_acc", "val_f1_macro")  # aqtrack.training.scores.SELECTABLE
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def option(
    default: Any,
    help: str,
    choices: tuple[str, ...] | None = None,
    check: tuple[Callable[[Any], bool], str] | None = None,
) -> Any:
    """A config field with its help text (shown by `--help` and in the README's settings reference),
    and its own check: (predicate, what the value must be). Choices are a check of their own."""
    if choices is not None:
        check = (lambda value, allowed=choices: value in allowed, f"one of {', '.join(choices)}")
    return field(default=default, metadata={"help": help, "choices": choices, "check": check})


def _at_least(bound: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value >= bound, f">= {bound:g}")


def _above(bound: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value > bound, f"> {bound:g}")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_bool(text: str) -> bool:
    """A boolean setting as typed on the command line or as an MLproject parameter (`-P svm=false`)."""
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise ValueError(f"expected true or false (got {text!r})")


def parse_int(text: str) -> int:
    """An integer setting as typed: `3`, or `3.0` as MLflow passes MLproject parameters declared float."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a whole number (got {text!r})") from None
    if not value.is_integer():
        raise ValueError(f"expected a whole number (got {text!r})")
    return int(value)


def show(value: Any) -> str:
    """A setting's value as the CLI and MLproject spell it: `true`, not `True`."""
    return str(value).lower() if isinstance(value, bool) else str(value)


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _check_value(f: dataclasses.Field, value: Any) -> None:
    """One setting on its own: its type (Python callers can pass anything), then its own check."""
    expected = _TYPES[str(f.type)]
    if isinstance(value, bool) != (expected == (bool,)) or not isinstance(value, expected):
        raise ConfigError(f"{flag(f.name)} must be of type {f.type} (got {value!r})", setting=f.name)
    check = f.metadata["check"]
    if check is not None and not check[0](value):
        raise ConfigError(f"{flag(f.name)} must be {check[1]} (got {value!r})", setting=f.name)


def _check_fields(settings: Any) -> None:
    for f in dataclasses.fields(settings):
        _check_value(f, getattr(settings, f.name))


def _check(ok: bool, name: str, requirement: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{flag(name)} must be {requirement} (got {value!r})", setting=name)


@dataclass
class DataConfig:
    data: str = option(
        "synthetic",
        "'synthetic' (embedded, seeded) or a .npz/.csv/.parquet/.ts file",
        check=(bool, "'synthetic' or a path"),
    )
    n_train: int = option(800, "synthetic data: number of training sequences", check=_at_least(1))
    n_val: int = option(200, "synthetic data: number of validation sequences", check=_at_least(1))
    n_test: int = option(
        200,
        "synthetic data: number of test sequences; 0 = no test split",
        check=(lambda v: v >= 0, ">= 0 (0 = no test split)"),
    )
    test_fraction: float = option(
        0.2,
        "data files without a 'split': test fraction (stratified; grouped by subject when the file "
        "has subjects); 0 = no test split; not used with --folds (the held-out fold is the test split)",
        check=(lambda v: 0.0 <= v < 1.0, "in [0, 1) (0 = no test split)"),
    )
    val_fraction: float = option(
        0.2,
        "data files without a 'split', and any data with --folds: validation fraction of what remains "
        "after the test split",
        check=(lambda v: 0.0 < v < 1.0, "between 0 and 1"),
    )
    folds: str = option(
        "",
        "cross-validation over all samples: K (grouped, stratified K-fold by subject; stratified without "
        "subjects) or loso (one fold per subject); '' = none. `aqtrack cv` trains every fold, `aqtrack "
        "train` the one --fold names",
        check=(lambda v: v in ("", LOSO) or (v.isdigit() and int(v) >= 2), "'', a whole number >= 2 or loso"),
    )
    fold: int = option(
        0,
        "with --folds: the fold to train (1..K): its samples are the test split, validation is carved from "
        "the others (--val-fraction, grouped by subject); 0 = none (aqtrack cv sets it per fold)",
        check=_at_least(0),
    )
    missing: str = option(
        "interpolate",
        "missing values inside recordings (NaN, skipped frames): interpolate (linear over frames; the count "
        "is logged) or refuse",
        choices=MISSING_POLICIES,
    )
    data_seed: int = option(0, "seed of the synthetic data and of the splits of data files (and folds)")

    def __post_init__(self) -> None:
        _check_fields(self)
        no_cv = "0 without --folds (no cross-validation)"
        _check(bool(self.folds) or not self.fold, "fold", no_cv, self.fold)
        if self.folds.isdigit():
            _check(self.fold <= int(self.folds), "fold", f"<= --folds ({self.folds})", self.fold)


@dataclass
class ModelConfig:
    hidden: int = option(
        64, "channels of the 1D-CNN's convolutions (features() returns 2x this)", check=_at_least(1)
    )
    dropout: float = option(
        0.2, "dropout before the classifier head", check=(lambda v: 0.0 <= v < 1.0, "in [0, 1)")
    )

    def __post_init__(self) -> None:
        _check_fields(self)


@dataclass
class TrainConfig:
    rounds: int = option(3, "training rounds; the cosine schedule restarts at each round", check=_at_least(1))
    epochs_per_round: int = option(100, "epochs in each round", check=_at_least(1))
    lr: float = option(1e-3, "peak learning rate, at the start of each cosine cycle", check=_above(0))
    min_lr: float = option(1e-6, "floor of the cosine schedule", check=_at_least(0))
    t0: int = option(
        0,
        "epochs of the first cosine cycle (CosineAnnealingWarmRestarts T_0); 0 = one round",
        check=(lambda v: v >= 0, ">= 0 (0 restarts the schedule at every round)"),
    )
    t_mult: int = option(
        1, "growth factor of the cosine cycle length (CosineAnnealingWarmRestarts T_mult)", check=_at_least(1)
    )
    optimizer: str = option("adamw", "optimizer: adamw or adam", choices=OPTIMIZERS)
    weight_decay: float = option(1e-2, "weight decay", check=_at_least(0))
    batch_size: int = option(32, "training batch size", check=_at_least(1))
    max_grad_norm: float = option(1.0, "gradient clipping: max total L2 norm", check=_above(0))
    checkpoint_interval: int = option(
        10, "epochs between periodic checkpoints (last.pt is saved every epoch)", check=_at_least(1)
    )
    num_workers: int = option(0, "DataLoader worker processes (0 is safe in Jupyter)", check=_at_least(0))
    seed: int = option(42, "seed of model init, dropout and data order")
    device: str = option("auto", "where to train: auto (cuda when available), cpu or cuda", choices=DEVICES)
    amp: str = option(
        "none",
        "mixed precision on CUDA: none, bf16 or fp16 (fp16 with a gradient scaler)",
        choices=PRECISIONS,
    )
    class_weight: str = option(
        "none",
        "weights of the classes in the loss: none, or balanced (n_samples / (n_classes * class count) of "
        "the training split, as scikit-learn's compute_class_weight)",
        choices=CLASS_WEIGHTS,
    )
    select_by: str = option(
        "val_acc",
        "what the best epoch is chosen by, on the validation split: val_acc, val_balanced_acc or "
        "val_f1_macro; the best checkpoint, the logged model and the test scores are that epoch's",
        choices=SELECT_BY,
    )

    def __post_init__(self) -> None:
        _check_fields(self)
        _check(self.min_lr <= self.lr, "min_lr", f"<= --lr ({self.lr})", self.min_lr)

    @property
    def total_epochs(self) -> int:
        return self.rounds * self.epochs_per_round


@dataclass
class SvmConfig:
    svm: bool = option(True, "after training, fit an SVM on the best network's features (--no-svm skips it)")
    svm_c: float = option(1.0, "SVM regularisation C", check=_above(0))
    svm_kernel: str = option("rbf", "SVM kernel", choices=SVM_KERNELS)

    def __post_init__(self) -> None:
        _check_fields(self)


@dataclass
class RunConfig:
    experiment: str = option(
        "action-quality",
        "MLflow experiment (under `mlflow run`, MLflow's choice wins)",
        check=(bool, "a non-empty name"),
    )
    run_name: str = option("", "MLflow run name; empty = a readable generated one (renames a resumed run)")
    output_dir: str = option(
        "outputs",
        "where each run's local files go: <output-dir>/<run id>/ (report, checkpoints, plots)",
        check=(bool, "a directory path"),
    )
    tracking_patience: float = option(
        600.0,
        "seconds training goes on while the tracking server is unreachable (metrics and checkpoints "
        "wait locally and are sent when it is back) before it stops; 0 = stop at the first failure",
        check=_at_least(0),
    )
    publish_interval: float = option(
        5.0,
        "least seconds between two publishes to MLflow (metrics, checkpoints, tags): epochs in between are "
        "sent together; local checkpoints are still written every epoch; 0 = publish every epoch",
        check=(lambda v: 0 <= v <= 300, "between 0 and 300 seconds (a run silent for 900 s counts as dead)"),
    )
    log_model: bool = option(
        True,
        "log the best network as an MLflow model (torch.export, for serving and `mlflow.pyfunc`); "
        "--no-log-model skips it and saves seconds a run (`aqtrack predict RUN` works from the checkpoint)",
    )
    register: str = option(
        "", "register the best network in the MLflow model registry under this name (needs --log-model)"
    )
    system_metrics: bool = option(False, "log CPU, memory (and GPU) usage as MLflow system metrics")

    def __post_init__(self) -> None:
        _check_fields(self)
        _check(
            self.log_model or not self.register,
            "register",
            "empty with --no-log-model (only a logged network can be registered)",
            self.register,
        )


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
    | {"tracking_patience", "publish_interval", "device", "svm", "svm_c", "svm_kernel", "register"}
    | {"system_metrics", "log_model"}
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


def check_values(values: dict[str, Any]) -> None:
    """Check settings one by one, without a whole config around them: what a resume or a fork can
    check before the run it starts from (and its settings) is known."""
    check_known(values)
    fields = {name: f for _, name, f in config_fields()}
    for name, value in values.items():
        _check_value(fields[name], value)


def config_fields() -> Iterator[tuple[str, str, dataclasses.Field]]:
    """(section, name, field) for every setting, in declaration order."""
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            yield section, f.name, f


def parse_param(name: str, text: str) -> Any:
    """A logged MLflow param back as its setting's value (None if it does not parse)."""
    kind = next(str(f.type) for _, n, f in config_fields() if n == name)
    try:
        return {"int": parse_int, "float": float, "str": str, "bool": parse_bool}[kind](text)
    except ValueError:
        return None


def _changes(saved: Config, given: dict[str, Any], may_change: frozenset[str]) -> tuple[dict, list[str]]:
    """The given settings that differ from the run's, and each one outside `may_change` described as
    `--flag=value (the run has value)`."""
    check_known(given)
    current = saved.to_dict()
    changed = {k: v for k, v in given.items() if v != current[k]}
    conflicts = [
        f"{flag(k)}={v!r} (the run has {current[k]!r})" for k, v in changed.items() if k not in may_change
    ]
    return changed, conflicts


def resumed(saved: Config, given: dict[str, Any]) -> Config:
    """The config of a resumed run: the checkpoint's, plus the `RESUMABLE` settings the user gave.

    `given` holds exactly what the user passed (a flag, `-P name=value`, a keyword), whatever its
    value. Giving a setting outside `RESUMABLE` is fine when it repeats the run's value; changing it is
    refused, because the checkpoint's optimizer, schedule and data would no longer describe the run.
    """
    changed, conflicts = _changes(saved, given, RESUMABLE)
    if conflicts:
        raise ConfigError(
            f"cannot change {', '.join(conflicts)} when resuming; only "
            f"{', '.join(flag(k) for k in sorted(RESUMABLE - {'experiment'}))} may change: start a new run, "
            "or fork "
            "this one (--fork RUN_ID --fork-epoch N) to change them from one of its checkpoints"
        )
    return saved.replace(**changed)


# Settings that may change when a cross-validation is resumed: none that changes what a fold measures,
# since its finished folds keep theirs (`rounds` and the SVM's settings included).
CV_RESUMABLE = frozenset(
    {"checkpoint_interval", "num_workers", "output_dir", "experiment", "run_name", "tracking_patience"}
    | {"publish_interval", "device", "system_metrics"}
)


def cv_resumed(saved: Config, given: dict[str, Any]) -> Config:
    """The config of a resumed cross-validation: its own, plus the `CV_RESUMABLE` settings given. A
    given setting that repeats the run's value is fine; changing another one is refused."""
    changed, conflicts = _changes(saved, given, CV_RESUMABLE)
    if conflicts:
        may = ", ".join(flag(k) for k in sorted(CV_RESUMABLE - {"experiment"}))
        raise ConfigError(
            f"cannot change {', '.join(conflicts)} when resuming a cross-validation: its finished folds "
            f"were trained without it; only {may} may change; start a new cross-validation to change it"
        )
    return saved.replace(**changed)


def fork_fixed() -> frozenset[str]:
    """Settings a fork cannot change: the data (every data setting) and the network's shape."""
    return frozenset(f.name for f in dataclasses.fields(DataConfig)) | {"hidden"}


def forked(saved: Config, given: dict[str, Any]) -> Config:
    """The config of a fork: the source checkpoint's, with any given setting changed except the data
    and the model's shape (the checkpoint's weights must fit the network and the data it saw)."""
    check_known(given)
    current = saved.to_dict()
    conflicts = [
        f"{flag(k)}={v!r} (the run has {current[k]!r})"
        for k, v in given.items()
        if k in fork_fixed() and v != current[k]
    ]
    if conflicts:
        raise ConfigError(
            f"cannot change {', '.join(conflicts)} in a fork: it continues the source's network on the "
            "source's data; start a new run instead"
        )
    return saved.replace(**given)
