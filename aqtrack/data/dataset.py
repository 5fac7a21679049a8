"""Datasets: the embedded synthetic default and user files, both as `ActionQualityData`.

This module imports numpy only: the file readers (pandas, aeon) and the splitters (scikit-learn) are
imported when a file is loaded, so `import aqtrack.data` stays light.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from aqtrack.config import DataConfig
from aqtrack.errors import ConfigError, DataError

SYNTHETIC = "synthetic"
MIN_FRAMES = 2  # a sample needs at least this many real frames


@dataclass(frozen=True)
class Split:
    """One split. x float32 [N, T_max, C]: a sample shorter than T_max ends in NaN frames (UCR/tslearn
    padding); inside its real length a sample never holds NaN (missing values were filled or refused)."""

    x: np.ndarray  # float32 [N, T_max, C]
    y: np.ndarray  # int64 [N], class indices 0..K-1
    lengths: np.ndarray  # int64 [N], real frames of each sample (>= 2)
    sample_ids: np.ndarray  # [N] str: the file's sample ids as strings; synthetic: "train-0", ...
    subjects: np.ndarray | None  # [N] str, or None when the data has no subjects
    metadata: dict[str, np.ndarray] = field(default_factory=dict)  # other per-sample columns, each [N]

    def __post_init__(self) -> None:
        n = len(self.x)
        per_sample = {"y": self.y, "lengths": self.lengths, "sample_ids": self.sample_ids}
        per_sample |= {} if self.subjects is None else {"subjects": self.subjects}
        per_sample |= {f"metadata[{k!r}]": v for k, v in self.metadata.items()}
        wrong = [f"{name} has {len(v)}" for name, v in per_sample.items() if len(v) != n]
        if self.x.ndim != 3 or wrong:
            raise ValueError(
                f"Split: x must be [N, T, C] with one entry per sample ({n}); {', '.join(wrong)}"
            )

    def __len__(self) -> int:
        return len(self.y)

    def select(self, indices: np.ndarray) -> Split:
        """The samples at `indices` (in that order), with every per-sample array alike."""
        return Split(
            x=np.ascontiguousarray(self.x[indices]),
            y=self.y[indices],
            lengths=self.lengths[indices],
            sample_ids=self.sample_ids[indices],
            subjects=None if self.subjects is None else self.subjects[indices],
            metadata={k: v[indices] for k, v in self.metadata.items()},
        )

    def stats(self, class_names: tuple[str, ...]) -> dict:
        """total, per_class, length {min, median, max} and (with subjects) the sorted subjects."""
        per_class = np.bincount(self.y, minlength=len(class_names))
        out: dict = {
            "total": len(self.y),
            "per_class": {name: int(n) for name, n in zip(class_names, per_class, strict=True)},
            "length": {
                "min": int(self.lengths.min()) if len(self) else 0,
                "median": float(np.median(self.lengths)) if len(self) else 0.0,
                "max": int(self.lengths.max()) if len(self) else 0,
            },
        }
        if self.subjects is not None:
            out["subjects"] = sorted({str(s) for s in self.subjects})
        return out


@dataclass(frozen=True)
class ActionQualityData:
    """Motion sequences split into train, validation and (usually) test, with what the loader decided.

    All splits share one T_max (the longest sample of the whole dataset). `missing_policy` and
    `split_info` record how missing values were handled and how the splits were made (`stats()`).
    """

    train: Split
    val: Split
    test: Split | None  # None only when the data has no test split at all
    class_names: tuple[str, ...]
    channel_names: tuple[str, ...]
    source: str  # "synthetic" or the file path as given
    filled_values: int = 0  # missing values filled by the missing-frame policy, all splits together
    notes: tuple[str, ...] = ()  # what the loader decided on the user's behalf, one line each
    missing_policy: str = "interpolate"
    split_info: dict = field(default_factory=dict)  # JSON-ready: {"method": "file" | ..., fractions, seed}

    # Compatibility: the training loop, SVM and exports read the arrays under these names.
    @property
    def x_train(self) -> np.ndarray:
        return self.train.x

    @property
    def y_train(self) -> np.ndarray:
        return self.train.y

    @property
    def x_val(self) -> np.ndarray:
        return self.val.x

    @property
    def y_val(self) -> np.ndarray:
        return self.val.y

    @property
    def splits(self) -> dict[str, Split]:
        """{"train": ..., "val": ..., "test": ...} without the test split when there is none."""
        named = {"train": self.train, "val": self.val, "test": self.test}
        return {name: split for name, split in named.items() if split is not None}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def seq_len(self) -> int:
        """T_max over all splits."""
        return max(int(split.x.shape[1]) for split in self.splits.values())

    @property
    def channels(self) -> int:
        return int(self.train.x.shape[2])

    def digest(self) -> str:
        """sha256 of what training sees (every split's recordings, labels and lengths, the class and
        channel names): a resume checks that its data is the run's, wherever the file now lives."""
        h = hashlib.sha256()
        h.update("\x1f".join([*self.class_names, "|", *self.channel_names]).encode())
        for name, split in self.splits.items():
            h.update(name.encode())
            for array in (split.x, split.y, split.lengths):
                h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()

    def stats(self) -> dict:
        """`dataset_stats`: source, shapes, counts per split and class, lengths, subjects, the missing
        policy, the notes and how the splits were made (plain types, JSON-ready)."""
        out: dict = {
            "source": self.source,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "seq_len": self.seq_len,
            "channels": self.channels,
            "channel_names": list(self.channel_names),
        }
        out |= {name: split.stats(self.class_names) for name, split in self.splits.items()}
        out["missing"] = {"policy": self.missing_policy, "filled_values": int(self.filled_values)}
        out["notes"] = list(self.notes)
        out["split"] = dict(self.split_info)
        return out


def pad_sequences(seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sequences [T_i, C] -> (float32 [N, T_max, C] padded with NaN after each sequence, int64 lengths [N]).

    Raises ValueError when `seqs` is empty or the sequences are not 2-D with one channel count.
    """
    if not seqs:
        raise ValueError("pad_sequences needs at least one sequence")
    shapes = {np.shape(s)[1:] for s in seqs}
    if any(np.ndim(s) != 2 for s in seqs) or len(shapes) != 1:
        raise ValueError(f"pad_sequences needs 2-D [T_i, C] arrays with one C, got shapes {sorted(shapes)}")
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    x = np.full((len(seqs), int(lengths.max()), next(iter(shapes))[0]), np.nan, dtype=np.float32)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    return x, lengths


def lengths_of(x: np.ndarray) -> np.ndarray:
    """Real lengths of a NaN-padded float [N, T, C] array: frames up to the last frame with any non-NaN
    value (a sample that is NaN throughout has length 0). int64 [N]."""
    real = ~np.isnan(x).all(axis=2)  # [N, T]: frames that hold at least one value
    t = x.shape[1]
    last_from_end = np.argmax(real[:, ::-1], axis=1)
    return np.where(real.any(axis=1), t - last_from_end, 0).astype(np.int64)


@dataclass(frozen=True)
class Pooled:
    """Every sample of a dataset before any split: what cross-validation divides into folds."""

    samples: Split
    class_names: tuple[str, ...]
    channel_names: tuple[str, ...]
    source: str
    filled_values: int = 0
    notes: tuple[str, ...] = ()
    missing_policy: str = "interpolate"
    info: dict = field(default_factory=dict)  # how the samples came about (synthetic: its sizes), or {}

    def split(self, partition) -> ActionQualityData:
        """The splits a `splits.Partition` of these samples describes."""
        return ActionQualityData(
            train=self.samples.select(partition.train),
            val=self.samples.select(partition.val),
            test=None if partition.test is None else self.samples.select(partition.test),
            class_names=self.class_names,
            channel_names=self.channel_names,
            source=self.source,
            filled_values=self.filled_values,
            notes=(*self.notes, *partition.notes),
            missing_policy=self.missing_policy,
            split_info={**partition.info, **({"pooled": self.info} if self.info else {})},
        )


@dataclass(frozen=True)
class FoldPlan:
    """The folds of a cross-validation: every sample of `pool` is in the test split of one fold."""

    pool: Pooled
    tests: tuple[np.ndarray, ...]  # sorted sample indices of folds 1..K
    method: str  # a key of splits.CV_METHODS: grouped, loso or stratified
    val_fraction: float
    seed: int

    @property
    def k(self) -> int:
        return len(self.tests)

    def fold_of(self) -> np.ndarray:
        """int64 [N]: the fold (1..K) whose test split holds each sample."""
        out = np.zeros(len(self.pool.samples), dtype=np.int64)
        for i, test in enumerate(self.tests, 1):
            out[test] = i
        return out

    def data(self, fold: int, announce: bool = True) -> ActionQualityData:
        """Fold `fold`'s train / validation / test splits (what `load_configured` gives its run)."""
        from aqtrack.data.splits import fold_partition

        s = self.pool.samples
        try:
            partition = fold_partition(
                s.y, s.subjects, self.pool.class_names, (list(self.tests), self.method),
                fold=fold, val_fraction=self.val_fraction, seed=self.seed, announce=announce,
            )  # fmt: skip
        except DataError as e:
            raise DataError(f"{self.pool.source}: {e}") from e
        return self.pool.split(partition)


def load_pool(cfg: DataConfig) -> Pooled:
    """All the samples `cfg` describes, unsplit: the synthetic data's n_train + n_val + n_test sequences
    (with their simulated subjects), or every sample of a file (its own `split` is not used)."""
    if cfg.data == SYNTHETIC:
        from aqtrack.data.synthetic import generate

        made = generate(n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test, seed=cfg.data_seed)
        return Pooled(
            samples=concat(list(made.splits.values())),
            class_names=made.class_names,
            channel_names=made.channel_names,
            source=made.source,
            missing_policy=cfg.missing,
            info={k: v for k, v in made.split_info.items() if k != "method"},
        )
    from aqtrack.data.files import read_pool

    return read_pool(_existing(cfg.data), missing=cfg.missing)


def fold_plan(cfg: DataConfig) -> FoldPlan:
    """The cross-validation `cfg.folds` asks for, over all of `cfg`'s samples, seeded by `data_seed`."""
    from aqtrack.data.splits import fold_tests

    pool = load_pool(cfg)
    try:
        tests, method = fold_tests(pool.samples.y, pool.samples.subjects, cfg.folds, cfg.data_seed)
    except DataError as e:
        raise DataError(f"{pool.source}: {e}") from e
    return FoldPlan(pool, tuple(tests), method, cfg.val_fraction, cfg.data_seed)


def concat(splits: list[Split]) -> Split:
    """Samples of several splits as one, in order; x padded with NaN to the longest T. Metadata columns
    that not every split has are dropped."""
    t = max(int(s.x.shape[1]) for s in splits)
    padded = [np.pad(s.x, ((0, 0), (0, t - s.x.shape[1]), (0, 0)), constant_values=np.nan) for s in splits]
    keys = set.intersection(*(set(s.metadata) for s in splits))
    with_subjects = all(s.subjects is not None for s in splits)
    return Split(
        x=np.concatenate(padded).astype(np.float32, copy=False),
        y=np.concatenate([s.y for s in splits]),
        lengths=np.concatenate([s.lengths for s in splits]),
        sample_ids=np.concatenate([s.sample_ids for s in splits]),
        subjects=np.concatenate([s.subjects for s in splits]) if with_subjects else None,
        metadata={k: np.concatenate([s.metadata[k] for s in splits]) for k in sorted(keys)},
    )


def load_configured(cfg: DataConfig) -> ActionQualityData:
    """The dataset a run's `DataConfig` describes: with `folds`, the splits of its `fold`."""
    if cfg.folds:
        if not cfg.fold:
            raise ConfigError(
                f"--folds {cfg.folds} needs --fold N, the fold to train (1..K); `aqtrack cv` trains "
                "every fold",
                setting="fold",
            )
        return fold_plan(cfg).data(cfg.fold)
    return load_data(
        cfg.data,
        n_train=cfg.n_train,
        n_val=cfg.n_val,
        n_test=cfg.n_test,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        missing=cfg.missing,
        seed=cfg.data_seed,
    )


def load_data(
    source: str,
    *,
    n_train: int,
    n_val: int,
    val_fraction: float,
    seed: int,
    n_test: int = DataConfig.n_test,
    test_fraction: float = DataConfig.test_fraction,
    missing: str = DataConfig.missing,
) -> ActionQualityData:
    """Load `source`: "synthetic" (seeded; `n_train`/`n_val`/`n_test` samples, subject-disjoint splits)
    or a .npz/.csv/.parquet/.ts file (see `aqtrack.data.files` for the formats).

    Files without their own split get a seeded split: `test_fraction` for test first, then
    `val_fraction` of the rest for validation; grouped by subject when the file has subjects. Missing
    values inside recordings are filled or refused per `missing`. Raises DataError for any problem
    with the file (one line naming the file, the problem and the fix).
    """
    if source == SYNTHETIC:
        from aqtrack.data.synthetic import generate

        # Synthetic recordings have nothing missing; the policy is recorded so stats() says what was asked.
        return replace(
            generate(n_train=n_train, n_val=n_val, n_test=n_test, seed=seed), missing_policy=missing
        )

    from aqtrack.data.files import load_file

    path = _existing(source)
    return load_file(path, val_fraction=val_fraction, test_fraction=test_fraction, missing=missing, seed=seed)


def _existing(source: str) -> Path:
    path = Path(source)
    if not path.is_file():
        raise DataError(
            f"{source}: data file not found; pass --data synthetic or a .npz/.csv/.parquet/.ts file"
        )
    return path
