"""The legacy `experiment_report.json` read by the existing visualizer. Its keys are a frozen format.

Legacy keys: control_losses (per-epoch mean train loss), batch_losses (flat, at most 100 per epoch),
grad_norms, learning_rates, current_epoch, total_batches, dataset_stats, timestamp. The rest are
extras. Values that were never measured are null, never filled in.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aqtrack.atomic import write_text_atomically
from aqtrack.names import (
    GRAD_NORM,
    GRAD_NORM_MAX,
    LR,
    METRIC_KEYS,
    REPORT_FILE,
    TRAIN_ACC,
    TRAIN_LOSS,
    VAL_ACC,
    VAL_BALANCED_ACC,
    VAL_F1_MACRO,
    VAL_LOSS,
)
from aqtrack.training.checkpoint import History, TrainState


def build_report(
    history: History, *, epochs: list[int], dataset_stats: dict, run_id: str, config: dict[str, Any]
) -> dict[str, Any]:
    """The report for `history`, whose metric lists run over `epochs` (None where not measured)."""
    m = history.metrics

    def series(key: str) -> list[float | None]:
        # NaN marks an epoch that did not measure the key (a run older than the metric): null here.
        return [None if v is None or v != v else v for v in m.get(key, [None] * len(epochs))]

    return {
        "control_losses": series(TRAIN_LOSS),
        "batch_losses": [loss for epoch_losses in history.batch_losses for loss in epoch_losses],
        "grad_norms": series(GRAD_NORM),
        "learning_rates": series(LR),
        "current_epoch": max(epochs, default=0),
        "total_batches": history.total_batches,
        "dataset_stats": dataset_stats,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        # Extras.
        "epochs": epochs,
        "train_acc": series(TRAIN_ACC),
        "val_loss": series(VAL_LOSS),
        "val_acc": series(VAL_ACC),
        "val_balanced_acc": series(VAL_BALANCED_ACC),
        "val_f1_macro": series(VAL_F1_MACRO),
        "grad_norms_max": series(GRAD_NORM_MAX),
        "batch_losses_per_epoch": [len(losses) for losses in history.batch_losses],
        "run_id": run_id,
        "rounds": config.get("rounds"),
        "epochs_per_round": config.get("epochs_per_round"),
        "select_by": config.get("select_by", VAL_ACC),
    }


def history_from_points(
    points: dict[str, dict[int, float]], batch_source: History | None
) -> tuple[History, list[int]]:
    """A History (and its epochs) from MLflow metric points {key: {step: value}}.

    Batch losses are not MLflow metrics (one point per epoch per key is the rule); they come from the
    run's checkpoint when one is given, for the epochs it covers.
    """
    epochs = sorted(set().union(*(steps.keys() for steps in points.values()))) if points else []
    metrics = {key: [points.get(key, {}).get(e) for e in epochs] for key in METRIC_KEYS}
    history = History(metrics=metrics)
    if batch_source is not None:
        history.batch_losses = batch_source.batch_losses[: len(epochs)]
        history.total_batches = batch_source.total_batches
    return history, epochs


def report_writer(tracker, directory: Path, dataset_stats: dict, run_id: str) -> ReportWriter:
    """The epoch-end hook that keeps a training's report (see `ReportWriter`)."""
    return ReportWriter(tracker, directory, dataset_stats, run_id)


class ReportWriter:
    """Keeps a training's legacy report in `directory` and in the run, at the pace the run is published.

    As an epoch-end hook it only notes the training's state. The report is built from it, written and
    queued for the run whenever the tracker is about to publish (`MlflowTracker.before_publish`): at
    most once per `--publish-interval`, and always at the end of training and on a stop. So the file,
    like MLflow's view of the run, is at most the interval plus one epoch behind, and at epoch 3000
    (1.9 MB of JSON, written and fsynced) it costs what it costs once per publish, not every epoch.
    `write(state)` writes it at once.
    """

    def __init__(self, tracker, directory: Path, dataset_stats: dict, run_id: str) -> None:
        self.tracker, self.directory = tracker, directory
        self.dataset_stats, self.run_id = dataset_stats, run_id
        self.encoder = AppendOnlyEncoder()
        self.state: TrainState | None = None
        self.written = -1  # the epoch of the report last written
        tracker.before_publish(self._publishing)

    def __call__(self, state: TrainState) -> None:
        self.state = state

    def write(self, state: TrainState) -> None:
        epochs = list(range(1, state.history.epochs + 1))
        report = build_report(
            state.history,
            epochs=epochs,
            dataset_stats=self.dataset_stats,
            run_id=self.run_id,
            config=state.config,
        )
        self.tracker.log_artifact(write_report(report, self.directory, self.encoder))
        self.state, self.written = state, state.epoch

    def _publishing(self) -> None:
        if self.state is not None and self.state.epoch != self.written:
            self.write(self.state)


class AppendOnlyEncoder:
    """`json.dumps(report)`, byte for byte, without encoding the same numbers again every epoch.

    During training the report's lists only grow, so the text of the items already seen is kept and
    only the new ones are encoded: rewriting the report stays cheap at epoch 3000 (a full encode of
    its 75,000 batch losses takes ~45 ms; comparing them with the last epoch's, about 1 ms).
    """

    def __init__(self) -> None:
        self._lists: dict[str, tuple[list[Any], str]] = {}  # key -> (items encoded, their text)

    def encode(self, report: dict[str, Any]) -> str:
        parts = []
        for key, value in report.items():
            text = self._list(key, value) if isinstance(value, list) else _dumps(value)
            parts.append(f"{_dumps(key)}: {text}")
        return "{" + ", ".join(parts) + "}"

    def _list(self, key: str, items: list[Any]) -> str:
        seen, text = self._lists.get(key, ([], ""))
        n = len(seen)
        if items[:n] != seen:  # not an extension of what was encoded (comparing is cheap): start over
            text, n = "", 0
        new = ", ".join(_dumps(x) for x in items[n:])
        text = f"{text}, {new}" if text and new else text or new
        self._lists[key] = (items, text)
        return f"[{text}]"


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False)


def write_report(report: dict[str, Any], directory: Path, encoder: AppendOnlyEncoder | None = None) -> Path:
    """Write `report` to `directory/experiment_report.json` atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / REPORT_FILE
    return write_text_atomically(path, encoder.encode(report) if encoder else _dumps(report))
