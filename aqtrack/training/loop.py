"""The training loop: build, restore, train an epoch, evaluate, log, checkpoint. No MLflow in here.

The loop reports to a `Tracker` (MLflow or a no-op) and never branches on which one it has.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from aqtrack.config import Config
from aqtrack.data.dataset import ActionQualityData
from aqtrack.errors import DataError, ResumeError, TrainingDiverged, first_line
from aqtrack.names import (
    ARTIFACT_DIR,
    CHECKPOINT_EPOCH_TAG,
    GRAD_NORM,
    GRAD_NORM_MAX,
    LR,
    TRAIN_ACC,
    TRAIN_LOSS,
    VAL_LOSS,
)
from aqtrack.training.checkpoint import (
    CheckpointPolicy,
    TrainState,
    capture_rng,
    restore_rng,
    write_checkpoints,
)
from aqtrack.training.distributed import SINGLE, Shards, World
from aqtrack.training.interrupts import deferred
from aqtrack.training.model import ActionQualityNet, ModelSpec, build_model, crop_batch
from aqtrack.training.precision import Precision, precision_for
from aqtrack.training.scores import scores

log = logging.getLogger(__name__)


class Tracker(Protocol):
    """What the training loop reports to. Every metric carries its step. Calls may be queued until
    `flush()`, which the loop calls once at the end of each epoch."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def flush(self) -> None: ...


class NullTracker:
    """Tracking switched off: the loop stays the same, nothing is recorded."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def flush(self) -> None:
        pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Batches(torch.utils.data.Dataset):
    """Tensors indexed a whole batch at a time: one gather per batch instead of one per sample.

    A batch is (x [B, T_b, C], y [B], lengths [B] or None): x cut to the longest real length in the
    batch (`crop_batch`), lengths None when no sequence in it is padded, so the model takes its plain
    path. Whether a batch is padded is read from the numpy `lengths` on the host (no device sync)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, lengths: np.ndarray | None) -> None:
        self.x, self.y = x, y
        # All full length (fixed-length data): skip the per-batch check altogether.
        self.lengths = None if lengths is None or (lengths == x.shape[1]).all() else lengths

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x, lengths = crop_batch(self.x, self.lengths, idx)
        return x, self.y[idx], lengths


def _batches(x: np.ndarray, y: np.ndarray, lengths: np.ndarray | None) -> _Batches:
    """x float32 [N, T, C] (shorter sequences end in NaN frames), y int64 [N], lengths int64 [N] of
    real frames (None: every sequence is T frames long)."""
    if lengths is not None:
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.shape != y.shape:
            raise ValueError(f"lengths has shape {lengths.shape}; want one per sequence: ({len(y)},)")
        bad = np.flatnonzero((lengths < 1) | (lengths > x.shape[1]))
        if len(bad):
            raise DataError(
                f"{len(bad)} sequence(s) have no real frame or more than the {x.shape[1]} there are (first: "
                f"sequence {bad[0]}, length {lengths[bad[0]]}); a sequence holds at least one frame with "
                "a value, and only trailing frames may be NaN"
            )
    return _Batches(torch.from_numpy(x), torch.from_numpy(y), lengths)


def sharded_loader(
    x: np.ndarray,
    y: np.ndarray,
    batches: Shards,
    generator: torch.Generator | None,
    num_workers: int,
    lengths: np.ndarray | None = None,
) -> DataLoader:
    """This process's share of each batch, in the order `batches` gives: (x [B, T_b, C], y [B], lengths
    [B] or None), see `_Batches`; each process cuts its share to the longest real length in it.
    `lengths` [N]: real frames per sequence (None: all fill x's T)."""
    data = _batches(x, y, lengths)
    return DataLoader(data, sampler=batches, batch_size=None, num_workers=num_workers, generator=generator)


@dataclass
class Trainer:
    """What the loop works on, built once per process."""

    config: Config
    spec: ModelSpec
    model: ActionQualityNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts
    train_loader: DataLoader
    val_loader: DataLoader
    data_generator: torch.Generator
    device: torch.device
    train_batches: Shards  # the training order; set_epoch before each epoch
    world: World = field(default_factory=World)
    precision: Precision = field(default_factory=Precision)
    class_weight: torch.Tensor | None = None  # [K] weights of the classes in the loss (--class-weight)
    net: torch.nn.Module | None = None  # what the training step calls: the model, or DDP around it

    def __post_init__(self) -> None:
        self.net = self.net or self.model

    def snapshot(self, state: TrainState) -> TrainState:
        """`state` with the current weights, optimizer, schedule, gradient scaler and RNG filled in."""
        state.model = self.model.state_dict()  # the bare model: no DDP `module.` prefixes
        state.optimizer = self.optimizer.state_dict()
        state.scheduler = self.scheduler.state_dict()
        # A scaler switched off (full precision on a CPU) keeps the state the run's GPU scaler had.
        state.scaler = self.precision.scaler.state_dict() or state.scaler
        state.rng = capture_rng(self.data_generator)
        return state


def build_trainer(
    cfg: Config, data: ActionQualityData, device: torch.device, world: World = SINGLE
) -> Trainer:
    """Seed, then build model, optimizer, cosine schedule and loaders (in that order, every time).
    With several processes (`world`), each loads its share of every batch; `distributed.wrap` follows."""
    t = cfg.train
    seed_everything(t.seed)
    spec = ModelSpec(data.channels, data.num_classes, cfg.model.hidden, cfg.model.dropout)
    model = build_model(spec)
    # Real lengths (fixed-length data: all T, and nothing is masked).
    train_lengths, val_lengths = data.train.lengths, data.val.lengths
    model.set_normalization(torch.from_numpy(data.x_train), torch.from_numpy(train_lengths))
    model.to(device)
    optimizer_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    # With t0 = epochs_per_round the cycle restarts at each round; stepped once per epoch.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=t.t0 or t.epochs_per_round, T_mult=t.t_mult, eta_min=t.min_lr
    )
    generator = torch.Generator().manual_seed(t.seed)
    train_batches = Shards(len(data.y_train), t.batch_size, world, seed=t.seed)
    val_batches = Shards(len(data.y_val), max(t.batch_size, 256), world)
    return Trainer(
        config=cfg,
        spec=spec,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=sharded_loader(
            data.x_train, data.y_train, train_batches, generator, t.num_workers, train_lengths
        ),
        val_loader=sharded_loader(data.x_val, data.y_val, val_batches, None, t.num_workers, val_lengths),
        data_generator=generator,
        device=device,
        train_batches=train_batches,
        world=world,
        precision=precision_for(t.amp, device),
        class_weight=class_weights(t.class_weight, data.y_train, data.num_classes, device),
    )


def class_weights(how: str, y: np.ndarray, num_classes: int, device: torch.device) -> torch.Tensor | None:
    """The loss's class weights: None for "none"; for "balanced", n_samples / (n_classes * count) of
    each class in the training split (scikit-learn's compute_class_weight("balanced") formula), so every
    class weighs as much in the loss as if the classes were balanced. float32 [num_classes]."""
    if how == "none":
        return None
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    weights = len(y) / (num_classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32, device=device)


def restore(trainer: Trainer, state: TrainState) -> None:
    """Load a checkpoint's weights, optimizer, schedule and RNG into a freshly built trainer (a resume:
    the same settings, so the same computation continues)."""
    _check_spec(trainer, state, ("in_channels", "num_classes", "hidden", "dropout"))
    with _mismatch_is_resume_error():
        trainer.model.load_state_dict(state.model)
        trainer.optimizer.load_state_dict(state.optimizer)
        trainer.scheduler.load_state_dict(state.scheduler)
        if state.scaler:  # a no-op when the scaler is switched off
            trainer.precision.scaler.load_state_dict(state.scaler)
    restore_rng(state.rng, trainer.data_generator)


def restore_fork(trainer: Trainer, state: TrainState, source_seed: int) -> None:
    """Continue another run's checkpoint (`state`, at epoch N) with this trainer's own settings: the
    checkpoint's weights, optimizer moments (Adam's running averages) and RNG, but this config's
    optimizer hyperparameters and schedule, the schedule advanced to where it stands after N epochs.
    With unchanged settings this is exactly `restore`. A seed other than `source_seed` re-seeds the
    randomness (dropout, data order) from here on."""
    _check_spec(trainer, state, ("in_channels", "num_classes", "hidden"))  # dropout may change
    hyperparameters = [{k: v for k, v in g.items() if k != "params"} for g in trainer.optimizer.param_groups]
    with _mismatch_is_resume_error():
        trainer.model.load_state_dict(state.model)
        trainer.optimizer.load_state_dict(state.optimizer)
        if state.scaler:
            trainer.precision.scaler.load_state_dict(state.scaler)
    for group, settings in zip(trainer.optimizer.param_groups, hyperparameters, strict=True):
        group.update(settings)  # lr, weight decay, ... and the schedule's initial_lr: this config's
    with warnings.catch_warnings():
        # "lr_scheduler.step() before optimizer.step()": expected, this replays the schedule's epochs.
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(state.epoch):
            trainer.scheduler.step()
    restore_rng(state.rng, trainer.data_generator)
    if trainer.config.train.seed != source_seed:
        seed_everything(trainer.config.train.seed)
        trainer.data_generator.manual_seed(trainer.config.train.seed)


def _check_spec(trainer: Trainer, state: TrainState, keys: tuple[str, ...]) -> None:
    saved, built = state.model_spec, trainer.spec.to_dict()
    for key in keys:
        if saved.get(key) != built[key]:
            raise ResumeError(
                f"checkpoint model has {key}={saved.get(key)} but the data and settings give {built[key]}; "
                "resume with the data the run was trained on"
            )


@contextlib.contextmanager
def _mismatch_is_resume_error() -> Iterator[None]:
    try:
        yield
    except (RuntimeError, ValueError, KeyError) as e:
        raise ResumeError(f"checkpoint does not match the model this aqtrack builds: {first_line(e)}") from e


def train_one_epoch(trainer: Trainer) -> tuple[dict[str, float], list[float]]:
    """One pass over the training data. Metrics accumulate on the device: one host sync per epoch (and,
    with several processes, one all-reduce of the loss sums and correct counts)."""
    net, optimizer, device, world = trainer.net, trainer.optimizer, trainer.device, trainer.world
    precision, scaler = trainer.precision, trainer.precision.scaler
    net.train()
    lr = optimizer.param_groups[0]["lr"]  # what every update of this epoch uses (stepped per epoch)
    sizes = trainer.train_batches.global_sizes  # samples in each batch, all processes together
    loss_sums, norms = [], []
    correct = torch.zeros((), dtype=torch.long, device=device)
    for (x, y, lengths), size in zip(trainer.train_loader, sizes, strict=True):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        lengths = _to(lengths, device)  # None: no padding in this batch, the plain path
        with precision.autocast():
            logits = net(x, lengths)
            loss_sum = F.cross_entropy(logits, y, weight=trainer.class_weight, reduction="sum")
        # DDP averages gradients over the processes: so scaled, that is the gradient of the mean loss
        # over the whole batch, however it was shared out (alone: the plain batch mean).
        loss = loss_sum / (size / world.size)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # so the norm is the true pre-clip norm (a no-op without a scaler)
        # After DDP's all-reduce every process holds the global gradient: the same norm everywhere.
        norms.append(torch.nn.utils.clip_grad_norm_(net.parameters(), trainer.config.train.max_grad_norm))
        scaler.step(optimizer)  # skips the update if fp16 gradients overflowed
        scaler.update()
        loss_sums.append(loss_sum.detach().double())
        correct += (logits.argmax(dim=1) == y).sum()
    totals = world.all_reduce(torch.stack([*loss_sums, correct.double()])).cpu()
    batch_losses = totals[:-1] / torch.tensor(sizes, dtype=torch.float64)
    norms_t = _applied(torch.stack(norms).double().cpu(), scaler)
    seen = sum(sizes)
    metrics = {
        TRAIN_LOSS: float(totals[:-1].sum() / seen),
        TRAIN_ACC: float(totals[-1]) / seen,
        LR: float(lr),
        GRAD_NORM: float(norms_t.mean()),
        GRAD_NORM_MAX: float(norms_t.max()),
    }
    return metrics, batch_losses.tolist()


def _to(lengths: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if lengths is None else lengths.to(device, non_blocking=True)


def _applied(norms: torch.Tensor, scaler: torch.amp.GradScaler) -> torch.Tensor:
    """The norms of the steps that updated the weights: with fp16, an overflow (inf norm) makes the
    scaler skip the step and lower its scale, which is expected, not divergence."""
    if not scaler.is_enabled():
        return norms
    finite = norms[torch.isfinite(norms)]
    return finite if len(finite) else norms


@dataclass(frozen=True)
class Evaluation:
    """A pass over one split in eval mode: the mean loss (class-weighted as in training) and the
    confusion counts int64 [K, K] (true x predicted), from which every score follows."""

    loss: float
    counts: np.ndarray

    def metrics(self, split: str) -> dict[str, float]:
        """{"<split>_loss", "<split>_acc", "<split>_balanced_acc", "<split>_f1_macro"}."""
        s = scores(self.counts)
        return {
            f"{split}_loss": self.loss,
            f"{split}_acc": s["acc"],
            f"{split}_balanced_acc": s["balanced_acc"],
            f"{split}_f1_macro": s["f1_macro"],
        }


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    loader: Iterable,
    device: torch.device,
    world: World = SINGLE,
    class_weight: torch.Tensor | None = None,
) -> Evaluation:
    """`loader`'s split in eval mode; with several processes, over all their shares (the loss sums and
    confusion counts are summed: one all-reduce)."""
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    k = model.spec.num_classes
    counts = torch.zeros(k * k, dtype=torch.long, device=device)
    seen = 0
    for x, y, lengths in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x, _to(lengths, device))
        total_loss += F.cross_entropy(logits, y, weight=class_weight, reduction="sum").double()
        counts += torch.bincount(y * k + logits.argmax(dim=1), minlength=k * k)
        seen += len(y)
    if world.size > 1:
        totals = world.all_reduce(
            torch.cat([total_loss.view(1), total_loss.new_tensor([seen]), counts.double()])
        )
        total_loss, seen, counts = totals[0], int(totals[1]), totals[2:].round().long()
    return Evaluation(float(total_loss) / seen, counts.view(k, k).cpu().numpy())


EpochHook = Callable[[TrainState], None]


def fit(
    trainer: Trainer,
    state: TrainState,
    tracker: Tracker,
    checkpoint_dir: Path | None,
    on_epoch_end: Iterable[EpochHook] = (),
) -> TrainState:
    """Train from `state.epoch + 1` to the configured total, one tracked, checkpointed epoch at a time.
    `checkpoint_dir` None: this process writes no checkpoints (the other ranks under torchrun)."""
    t = trainer.config.train
    policy = CheckpointPolicy(t.checkpoint_interval, t.epochs_per_round)
    for epoch in range(state.epoch + 1, t.total_epochs + 1):
        trainer.train_batches.set_epoch(epoch)
        metrics, batch_losses = train_one_epoch(trainer)
        validation = evaluate(
            trainer.model, trainer.val_loader, trainer.device, trainer.world, trainer.class_weight
        )
        metrics.update(validation.metrics("val"))
        trainer.scheduler.step()
        _check_finite(metrics, batch_losses, epoch)

        with deferred():  # a stop signal waits until this epoch is fully published
            state.epoch = epoch
            state.history.append(metrics, batch_losses)
            improved = metrics[t.select_by] > state.best_score  # on validation, never on test
            if improved:
                state.best_score, state.best_epoch = metrics[t.select_by], epoch

            names = policy.names(epoch, improved) if checkpoint_dir is not None else []
            for path in write_checkpoints(trainer.snapshot(state), checkpoint_dir, names):
                tracker.log_artifact(path, ARTIFACT_DIR)  # each file, then its manifest
            tracker.log_metrics(metrics, step=epoch)
            tracker.set_tags({CHECKPOINT_EPOCH_TAG: str(epoch)})  # sent after the files
            for hook in on_epoch_end:
                hook(state)
            tracker.flush()
    return state


def _check_finite(metrics: dict[str, float], batch_losses: list[float], epoch: int) -> None:
    """Stop before a diverged epoch is logged or checkpointed, saying where it went wrong."""
    bad = next((k for k in (TRAIN_LOSS, GRAD_NORM, VAL_LOSS) if not math.isfinite(metrics[k])), None)
    if bad is None:
        return
    where = f"in epoch {epoch}"
    first = next((i for i, loss in enumerate(batch_losses) if not math.isfinite(loss)), None)
    if first is not None:
        where += f" (first at batch {first + 1} of {len(batch_losses)})"
    kept = f"; the checkpoints of epochs 1-{epoch - 1} are kept" if epoch > 1 else ""
    raise TrainingDiverged(
        f"{bad} became {metrics[bad]} {where}{kept}: lower --lr or --max-grad-norm, or check the data "
        "for extreme values, and start a new run"
    )
