"""How a run introduces itself in MLflow: a readable name and a markdown description (the run page's
"Description", tag `mlflow.note.content`) that says what was trained and, once it ends, how it went."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from aqtrack.config import Config
from aqtrack.data.dataset import ActionQualityData, FoldPlan
from aqtrack.names import (
    SVM_TEST_ACC,
    SVM_VAL_ACC,
    TEST_ACC,
    TEST_BALANCED_ACC,
    TEST_F1_MACRO,
    TRAIN_LOSS,
    VAL_ACC,
    VAL_LOSS,
)
from aqtrack.training.checkpoint import TrainState

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
    lines = [f"**Action-quality classifier**: {_model_line(cfg)}", f"**Data**: {_data_line(data)}"]
    if origin:
        lines.append(origin)
    lines += [f"**Results**: {RESULTS_PENDING}", _how_to_resume(run_id)]
    return "\n\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _model_line(cfg: Config) -> str:
    t, m = cfg.train, cfg.model
    return (
        f"1D CNN (hidden {m.hidden}, dropout {m.dropout:g}), "
        f"{_count(t.rounds, 'round')} x {_count(t.epochs_per_round, 'epoch')}, {t.optimizer} lr {t.lr:g} → "
        f"{t.min_lr:g} (cosine), batch {t.batch_size}, max grad norm {t.max_grad_norm:g}, seed {t.seed}; the "
        f"best epoch is chosen by {t.select_by} on the validation split"
        + (", classes weighted (balanced)." if t.class_weight == "balanced" else ".")
    )


def _data_line(data: ActionQualityData) -> str:
    splits = " / ".join(f"{len(split)} {name}" for name, split in data.splits.items())
    lengths = np.concatenate([split.lengths for split in data.splits.values()])
    frames = (
        f"{int(lengths.min())}-{int(lengths.max())} frames (median {float(np.median(lengths)):g})"
        if lengths.min() != lengths.max()
        else f"{int(lengths.max())} frames"
    )
    subjects = [split.subjects for split in data.splits.values() if split.subjects is not None]
    by_subject = f", {len(set(np.concatenate(subjects)))} subjects, split by subject" if subjects else ""
    filled = (
        f"; {data.filled_values} missing values filled ({data.missing_policy})" if data.filled_values else ""
    )
    return (
        f"{data.source}: {splits} sequences{by_subject}, {data.channels} channels x {frames}, "
        f"{data.num_classes} classes ({', '.join(data.class_names)}){filled or ''}."
    )


def final_note(note: str, state: TrainState, total: int, metrics: Mapping[str, float]) -> str:
    """`note` with its results filled in from the final state and the run's metrics (the test scores and
    the SVM's, when logged)."""
    h = state.history.metrics
    select_by = Config.from_dict(state.config).train.select_by
    also = "" if select_by == VAL_ACC else f", val_acc {state.best_val_acc:.4f}"
    results = (
        f"{state.epoch} of {total} epochs; best epoch {state.best_epoch} by {select_by} "
        f"(**{state.best_score:.4f}**{also}); final train_loss "
        f"{h[TRAIN_LOSS][-1]:.4f}, val_loss {h[VAL_LOSS][-1]:.4f}, val_acc {h[VAL_ACC][-1]:.4f}."
    )
    if TEST_ACC in metrics:
        results += (
            f"\n\n**Test** (held out, evaluated once with the best epoch's network: the numbers to "
            f"report): test_acc **{metrics[TEST_ACC]:.4f}**, test_balanced_acc "
            f"**{metrics[TEST_BALANCED_ACC]:.4f}**, test_f1_macro **{metrics[TEST_F1_MACRO]:.4f}**."
        )
    if SVM_VAL_ACC in metrics:
        results += f"\n\n**SVM** on the best network's features: val_acc **{metrics[SVM_VAL_ACC]:.4f}**"
        results += f", test_acc **{metrics[SVM_TEST_ACC]:.4f}**." if SVM_TEST_ACC in metrics else "."
    return note.replace(RESULTS_PENDING, results)


def _how_to_resume(run_id: str) -> str:
    return (
        f"**Continue**: `aqtrack train --resume {run_id}` (after a stop, or with `--rounds N` "
        "to train longer)."
    )


def cv_start_note(cfg: Config, plan: FoldPlan, run_id: str) -> str:
    """A cross-validation parent's description while its folds train: the protocol, the model, the data."""
    from aqtrack.data.splits import CV_METHODS

    s = plan.pool.samples
    subjects = f" of {len(np.unique(s.subjects))} subjects" if s.subjects is not None else " (no subjects)"
    return "\n\n".join(
        [
            f"**Cross-validation**, {plan.k} folds: {CV_METHODS[plan.method]} (data seed {plan.seed}). "
            "Each fold is a run nested under this one: the fold's samples are its test split, evaluated once "
            "with the epoch its validation split chose; validation (val_fraction "
            f"{plan.val_fraction:g}{', grouped by subject' if s.subjects is not None else ''}) is carved "
            "from the other folds.",
            f"**Each fold trains** a {_model_line(cfg)}",
            f"**Data**: {plan.pool.source}: {len(s)} sequences{subjects}, {len(plan.pool.channel_names)} "
            f"channels, {len(plan.pool.class_names)} classes ({', '.join(plan.pool.class_names)}).",
            f"**Results**: {RESULTS_PENDING}",
            f"**Continue**: `aqtrack cv --resume {run_id}` (after a stop: finished folds are kept).",
        ]
    )


def cv_final_note(note: str, planned: int, rows: list[dict], scores: Mapping[str, float]) -> str:
    """`note` with the aggregate filled in: how many folds finished, mean ± sample std of the test
    scores over them, the pooled out-of-fold scores, and a table of the folds."""
    from aqtrack.names import CV_MEAN, CV_OOF_ACC, CV_OOF_BALANCED_ACC, CV_OOF_F1_MACRO, CV_STD, TEST_KEYS

    if not rows:
        return note.replace(RESULTS_PENDING, f"no fold of {planned} finished yet.")
    spread = {k: (f" ± {scores[CV_STD[k]]:.4f}" if CV_STD[k] in scores else "") for k in TEST_KEYS}
    means = ", ".join(f"{k} **{scores[CV_MEAN[k]]:.4f}**{spread[k]}" for k in TEST_KEYS)
    results = (
        f"{len(rows)} of {planned} folds finished (only those are aggregated). {means} (mean ± sample "
        f"standard deviation over the folds); all out-of-fold predictions pooled: accuracy "
        f"{scores[CV_OOF_ACC]:.4f}, balanced accuracy {scores[CV_OOF_BALANCED_ACC]:.4f}, macro F1 "
        f"{scores[CV_OOF_F1_MACRO]:.4f}.\n\n"
        "| fold | subjects | n | test_acc | test_balanced_acc | test_f1_macro | best epoch |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    for row in rows:
        results += (
            f"| {row['fold']} | {row['n_subjects']} | {row['n']} | {row[TEST_KEYS[0]]:.4f} | "
            f"{row[TEST_KEYS[1]]:.4f} | {row[TEST_KEYS[2]]:.4f} | {row['best_epoch']} |\n"
        )
    return note.replace(RESULTS_PENDING, results.rstrip("\n"))
