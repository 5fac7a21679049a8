"""How a run introduces itself in MLflow: a readable name and a markdown description (the run page's
"Description", tag `mlflow.note.content`) that says what was trained and, once it ends, how it went."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from aqtrack.checkpoint import TrainState
from aqtrack.config import Config
from aqtrack.data import ActionQualityData
from aqtrack.metrics import TRAIN_LOSS, VAL_ACC, VAL_LOSS

NOTE_TAG = "mlflow.note.content"
RUN_NAME_TAG = "mlflow.runName"
SVM_VAL_ACC = "svm_val_acc"  # logged by the SVM stage, when the run has one
# What MLflow's own name generator makes ("bold-owl-123"): such a name is ours to make readable.
GENERATED_NAME_RE = re.compile(r"^[a-z]+-[a-z]+-\d+$")
RESULTS_PENDING = "_Training; the results are added here when it ends._"


def run_name(cfg: Config, generated: str) -> str:
    """`synthetic-h64-3x100-bold-owl-123`: data, model width and rounds x epochs, then MLflow's words."""
    data = cfg.data.data if cfg.data.data == "synthetic" else Path(cfg.data.data).stem
    t = cfg.train
    return f"{data}-h{cfg.model.hidden}-{t.rounds}x{t.epochs_per_round}-{generated}"


def start_note(cfg: Config, data: ActionQualityData, run_id: str, origin: str) -> str:
    """The description while training: the config, the data and, in `origin`, where the run came from
    (a markdown sentence; "" for a new run)."""
    t, m = cfg.train, cfg.model
    lines = [
        f"**Action-quality classifier**: 1D CNN (hidden {m.hidden}, dropout {m.dropout:g}), "
        f"{t.rounds} rounds x {t.epochs_per_round} epochs, {t.optimizer} lr {t.lr:g} → {t.min_lr:g} "
        f"(cosine), batch {t.batch_size}, max grad norm {t.max_grad_norm:g}, seed {t.seed}.",
        f"**Data**: {data.source}: {len(data.y_train)} train / {len(data.y_val)} val sequences, "
        f"{data.channels} channels x {data.seq_len} frames, {data.num_classes} classes "
        f"({', '.join(data.class_names)}).",
    ]
    if origin:
        lines.append(origin)
    lines += [f"**Results**: {RESULTS_PENDING}", _how_to_resume(run_id)]
    return "\n\n".join(lines)


def final_note(note: str, state: TrainState, total: int, metrics: Mapping[str, float]) -> str:
    """`note` with its results filled in from the final state (and the SVM score, if logged)."""
    h = state.history.metrics
    results = (
        f"{state.epoch} of {total} epochs; best val_acc **{state.best_val_acc:.4f}** at epoch "
        f"{state.best_epoch}; final train_loss {h[TRAIN_LOSS][-1]:.4f}, val_loss {h[VAL_LOSS][-1]:.4f}, "
        f"val_acc {h[VAL_ACC][-1]:.4f}."
    )
    if SVM_VAL_ACC in metrics:
        results += f"\n\n**SVM** on the best network's features: val_acc **{metrics[SVM_VAL_ACC]:.4f}**."
    return note.replace(RESULTS_PENDING, results)


def _how_to_resume(run_id: str) -> str:
    return (
        f"**Continue**: `aqtrack train --resume {run_id}` (after a stop, or with `--rounds N` "
        "to train longer)."
    )
