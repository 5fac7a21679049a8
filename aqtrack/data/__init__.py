"""Datasets: the embedded synthetic default and user files, both as `ActionQualityData`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aqtrack.config import DataConfig
from aqtrack.errors import DataError

SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class ActionQualityData:
    """Motion sequences split into train and validation, as float32 [N, T, C] and int64 [N]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    class_names: tuple[str, ...]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def seq_len(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[2])

    def stats(self) -> dict:
        """`dataset_stats`: source, shape and counts per split and class (plain types, JSON-ready)."""

        def counts(y: np.ndarray) -> dict[str, int]:
            per_class = np.bincount(y, minlength=self.num_classes)
            return {name: int(n) for name, n in zip(self.class_names, per_class, strict=True)}

        return {
            "source": self.source,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "seq_len": self.seq_len,
            "channels": self.channels,
            "train": {"total": len(self.y_train), "per_class": counts(self.y_train)},
            "val": {"total": len(self.y_val), "per_class": counts(self.y_val)},
        }


def load_configured(cfg: DataConfig) -> ActionQualityData:
    """The dataset a run's `DataConfig` describes."""
    return load_data(
        cfg.data, n_train=cfg.n_train, n_val=cfg.n_val, val_fraction=cfg.val_fraction, seed=cfg.data_seed
    )


def load_data(source: str, *, n_train: int, n_val: int, val_fraction: float, seed: int) -> ActionQualityData:
    """Load `source`: "synthetic" (seeded, `n_train`/`n_val` samples) or a .npz/.csv/.parquet file.

    Files without their own train/val split get a seeded stratified split of `val_fraction`.
    """
    if source == SYNTHETIC:
        from aqtrack.data.synthetic import generate

        return generate(n_train=n_train, n_val=n_val, seed=seed)

    from aqtrack.data.files import load_file

    path = Path(source)
    if not path.is_file():
        raise DataError(f"{source}: data file not found; pass --data synthetic or a .npz/.csv/.parquet file")
    return load_file(path, val_fraction=val_fraction, seed=seed)
