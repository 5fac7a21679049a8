"""Training state, checkpoint files and their naming policy.

A checkpoint is a dict of tensors and plain Python values only, so `torch.load(weights_only=True)`
reads it with no allow-list, and loading one from a shared tracking server can never run code. Files
are written to a temporary name and renamed, so a crash never leaves a half-written checkpoint.

Each checkpoint file `X.pt` is published in two steps: the file, then its manifest `X.pt.manifest.json`
(size, sha256, epoch) as the commit marker. Only a file whose manifest exists and matches is ever
resumed from: `torch.load` does not check the zip's CRCs, so a flipped byte would otherwise load silently,
and an upload cut short would look like an older checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import pickle
import random
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aqtrack.atomic import copy_atomically, write_atomically
from aqtrack.errors import ResumeError
from aqtrack.names import BEST, LAST, MANIFEST_SUFFIX

log = logging.getLogger(__name__)

FORMAT = "aqtrack.checkpoint"
FORMAT_VERSION = 2  # 2: history as tensors
MAX_BATCH_LOSSES_PER_EPOCH = 100
MANIFEST_FORMAT = "aqtrack.checkpoint.manifest"


def periodic_name(round_: int, epoch_in_round: int) -> str:
    return f"action_quality_round_{round_}_epoch_{epoch_in_round}.pt"


@dataclass
class History:
    """What was measured so far: per-epoch metrics (index = epoch - 1) and sampled batch losses."""

    metrics: dict[str, list[float]] = field(default_factory=dict)
    batch_losses: list[list[float]] = field(default_factory=list)  # <= 100 per epoch, evenly spaced
    total_batches: int = 0
    # The lists above as tensors, converted as they grow (see `to_dict`): not part of the history.
    _metric_columns: dict[str, _Column] = field(default_factory=dict, init=False, repr=False, compare=False)
    _flat_losses: _Column = field(
        default_factory=lambda: _Column(np.float64, itertools.chain.from_iterable),
        init=False,
        repr=False,
        compare=False,
    )
    _losses_per_epoch: _Column = field(
        default_factory=lambda: _Column(np.int64, _lengths),
        init=False,
        repr=False,
        compare=False,
    )

    @property
    def epochs(self) -> int:
        return len(self.batch_losses)

    def append(self, metrics: dict[str, float], batch_losses: list[float]) -> None:
        for key, value in metrics.items():
            # A key the earlier epochs did not measure (a run started by an older aqtrack): NaN there,
            # which means "not measured" (never logged as a point, null in the report).
            self.metrics.setdefault(key, [math.nan] * self.epochs).append(float(value))
        self.batch_losses.append(sample_evenly(batch_losses, MAX_BATCH_LOSSES_PER_EPOCH))
        self.total_batches += len(batch_losses)

    def to_dict(self) -> dict[str, Any]:
        """As float64 tensors (batch losses flat, with a count per epoch): a history of thousands of
        epochs pickled as Python floats would make every checkpoint write slower than the last. The
        lists only grow during training, so each call converts only the epochs added since the last
        one (`_Column`): what a checkpoint write costs grows with the bytes saved, not with the
        Python objects converted again every epoch."""
        columns = self._metric_columns
        for key in self.metrics.keys() - columns.keys():
            columns[key] = _Column(np.float64)
        return {
            "metrics": {key: columns[key].of(values) for key, values in self.metrics.items()},
            "batch_losses": self._flat_losses.of(self.batch_losses),
            "batch_losses_per_epoch": self._losses_per_epoch.of(self.batch_losses),
            "total_batches": self.total_batches,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        flat, counts = d["batch_losses"].tolist(), d["batch_losses_per_epoch"].tolist()
        starts = np.cumsum([0, *counts]).tolist()
        return cls(
            {k: v.tolist() for k, v in d["metrics"].items()},
            [flat[a:b] for a, b in itertools.pairwise(starts)],
            int(d["total_batches"]),
        )


def _lengths(epochs: list[list[float]]) -> Iterable[int]:
    return map(len, epochs)


class _Column:
    """A list that is only appended to, as a tensor, converting only the items appended since the last
    call. The values live in numpy storage that doubles when full; each call returns a view of its
    filled part (a tensor from a numpy slice owns just that slice's bytes, which is what torch.save
    writes). A view handed out is never written to again: appends go past its end, a grown buffer is a
    new one. Anything but an append (another list object, a shorter one) starts over in a new buffer."""

    def __init__(self, dtype: type, expand: Callable[[list], Iterable] = iter) -> None:
        self.dtype, self.expand = dtype, expand  # expand: items -> their values, in order
        self.source: list | None = None
        self.items = self.filled = 0
        self.buffer = np.empty(0, dtype)

    def of(self, source: list) -> torch.Tensor:
        if source is not self.source or len(source) < self.items:
            self.source, self.items, self.filled = source, 0, 0
            self.buffer = np.empty(0, self.dtype)
        values = np.fromiter(self.expand(source[self.items :]), dtype=self.dtype)
        end = self.filled + len(values)
        if end > len(self.buffer):
            grown = np.empty(max(end, 2 * len(self.buffer), 64), self.dtype)
            grown[: self.filled] = self.buffer[: self.filled]
            self.buffer = grown
        self.buffer[self.filled : end] = values
        self.items, self.filled = len(source), end
        return torch.from_numpy(self.buffer[:end])


@dataclass
class TrainState:
    """Everything needed to continue training exactly where it stopped."""

    config: dict[str, Any]  # flat Config.to_dict()
    model_spec: dict[str, Any]
    epoch: int = 0  # completed global epochs, 1-based when counting
    best_score: float = -1.0  # the best value so far of the metric the run selects by (`select_by`)
    best_epoch: int = 0  # the first epoch that reached it (0: none yet)
    history: History = field(default_factory=History)
    run_id: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)  # fp16 GradScaler state; {} without one
    class_names: list[str] = field(default_factory=list)  # the classes, in the order of the logits
    data_digest: str = ""  # ActionQualityData.digest() of the data it trains on ("": not recorded)

    @property
    def best_val_acc(self) -> float:
        """val_acc at the best epoch (-1 before any epoch)."""
        values = self.history.metrics.get("val_acc", [])
        return values[self.best_epoch - 1] if self.best_epoch else -1.0

    @property
    def round(self) -> int:
        return (self.epoch - 1) // self.config["epochs_per_round"] + 1 if self.epoch else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "epoch": self.epoch,
            "round": self.round,
            "best_score": self.best_score,
            "best_val_acc": self.best_val_acc,  # for readers of older checkpoints
            "best_epoch": self.best_epoch,
            "history": self.history.to_dict(),
            "run_id": self.run_id,
            "config": self.config,
            "model_spec": self.model_spec,
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "rng": self.rng,
            "scaler": self.scaler,
            "class_names": list(self.class_names),
            "data_digest": self.data_digest,
        }


def sample_evenly(values: list[float], most: int) -> list[float]:
    if len(values) <= most:
        return list(values)
    idx = np.linspace(0, len(values) - 1, most).round().astype(int)
    return [values[i] for i in idx]


def capture_rng(data_generator: torch.Generator) -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states plus the data-order generator, as plain types."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "data": data_generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], data_generator: torch.Generator) -> None:
    """Undo what building the model and loaders consumed: call after both exist."""
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    data_generator.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: TrainState, path: Path) -> Path:
    """Write `state` to `path` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, lambda f: torch.save(state.to_dict(), f))


# Keys that came later without a format change: a checkpoint without "scaler" loads with no scaler
# state, without "best_score" with its best_val_acc (runs selected by val_acc then), without
# "class_names" or "data_digest" with none (nothing to check the data against).
OPTIONAL_KEYS = {"round", "scaler", "best_score", "class_names", "data_digest"}
CHECKPOINT_KEYS = frozenset(TrainState(config={}, model_spec={}).to_dict()) - OPTIONAL_KEYS


def load_checkpoint(path: Path) -> TrainState:
    """Read a checkpoint safely: tensors and plain types only, never arbitrary pickled objects.
    Tensors come back on the CPU wherever they were saved (a GPU run resumes on a CPU machine);
    `loop.restore` moves them to the trainer's device."""
    try:
        # weights_only is explicit so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot switch it off.
        d = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ResumeError(
            f"{path.name}: refused to load: it holds objects other than tensors and plain values, which "
            "could run code when unpickled; only load checkpoints written by aqtrack"
        ) from e
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise ResumeError(f"{path.name}: corrupt or truncated checkpoint ({type(e).__name__})") from e
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ResumeError(f"{path.name}: not an aqtrack checkpoint (no '{FORMAT}' format marker)")
    if d.get("format_version") != FORMAT_VERSION:
        raise ResumeError(
            f"{path.name}: checkpoint format version {d.get('format_version')} is not supported "
            f"(this aqtrack reads version {FORMAT_VERSION}); use the aqtrack release that wrote it"
        )
    missing = sorted(CHECKPOINT_KEYS - set(d))
    if missing:
        raise ResumeError(f"{path.name}: incomplete checkpoint, missing {', '.join(missing)}")
    try:
        history = History.from_dict(d["history"])
    except (KeyError, AttributeError, TypeError, ValueError) as e:
        raise ResumeError(f"{path.name}: malformed training history ({type(e).__name__}: {e})") from e
    return TrainState(
        config=d["config"],
        model_spec=d["model_spec"],
        epoch=d["epoch"],
        best_score=d.get("best_score", d["best_val_acc"]),
        best_epoch=d["best_epoch"],
        history=history,
        run_id=d["run_id"],
        model=d["model"],
        optimizer=d["optimizer"],
        scheduler=d["scheduler"],
        rng=d["rng"],
        scaler=d.get("scaler", {}),
        class_names=list(d.get("class_names", [])),
        data_digest=str(d.get("data_digest", "")),
    )


@dataclass(frozen=True)
class CheckpointPolicy:
    """Which files an epoch's checkpoint goes to: last.pt always, best on improvement, periodic."""

    interval: int
    epochs_per_round: int

    def names(self, epoch: int, improved: bool) -> list[str]:
        names = []
        if epoch % self.interval == 0:
            round_, in_round = divmod(epoch - 1, self.epochs_per_round)
            names.append(periodic_name(round_ + 1, in_round + 1))
        if improved:
            names.append(BEST)
        names.append(LAST)  # last, so "last.pt is newest" holds even if a crash interrupts the others
        return names


def write_checkpoints(state: TrainState, directory: Path, names: list[str]) -> list[Path]:
    """Serialise `state` once and publish it atomically under each of `names`, each file followed by
    its manifest. Returns the paths in publishing order (file, manifest, file, manifest, ...)."""
    if not names:
        return []
    first = save_checkpoint(state, directory / names[0])
    manifest = Manifest.of(first, state.epoch, state.run_id)
    paths = []
    for name in names:
        if name != names[0]:
            copy_atomically(first, directory / name)
        paths += [directory / name, dataclasses.replace(manifest, file=name).write(directory)]
    return paths


def manifest_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + MANIFEST_SUFFIX)


@dataclass(frozen=True)
class Manifest:
    """The commit marker of one checkpoint file: what its bytes must be."""

    file: str
    size: int
    sha256: str
    epoch: int
    run_id: str

    @classmethod
    def of(cls, path: Path, epoch: int, run_id: str) -> Manifest:
        return cls(path.name, path.stat().st_size, _sha256(path), epoch, run_id)

    def write(self, directory: Path) -> Path:
        """Write this manifest next to its file in `directory` (atomically); return its path."""
        body = {"format": MANIFEST_FORMAT, "format_version": FORMAT_VERSION, **dataclasses.asdict(self)}
        return write_atomically(
            manifest_path(directory / self.file), lambda f: f.write(json.dumps(body).encode())
        )

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            d = json.loads(path.read_text())
            if d.get("format") != MANIFEST_FORMAT or d.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"not a version-{FORMAT_VERSION} aqtrack manifest")
            return cls(str(d["file"]), int(d["size"]), str(d["sha256"]), int(d["epoch"]), str(d["run_id"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ResumeError(f"{path.name}: unreadable manifest ({e})") from e


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checkpoint(path: Path, manifest: Manifest) -> TrainState:
    """Load `path` only if its bytes are what `manifest` committed (size, sha256, epoch)."""
    size = path.stat().st_size
    if size != manifest.size:
        raise ResumeError(f"{path.name}: {size} bytes, its manifest says {manifest.size} (truncated upload?)")
    if _sha256(path) != manifest.sha256:
        raise ResumeError(f"{path.name}: sha256 does not match its manifest (corrupted)")
    state = load_checkpoint(path)
    if state.epoch != manifest.epoch:
        raise ResumeError(f"{path.name}: holds epoch {state.epoch}, its manifest says {manifest.epoch}")
    return state
