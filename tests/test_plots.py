"""Figures show measured values only (gaps where an epoch has none), gradient norm and lr on log axes
with the explosion/vanishing bands; `aqtrack plot` draws a run or a report; gradient alerts warn and tag."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from matplotlib.patches import Polygon, Rectangle
from mlflow import MlflowClient
from mlflow.entities import Metric

import aqtrack
from aqtrack.alerts import (
    TAG_GRAD_EXPLOSION_EPOCHS,
    TAG_GRAD_VANISHING_EPOCHS,
    compact_ranges,
    gradient_alerts,
)
from aqtrack.checkpoint import History, TrainState
from aqtrack.cli import main
from aqtrack.metrics import GRAD_EXPLOSION, GRAD_NORM, GRAD_VANISHING, LR, TRAIN_LOSS, VAL_ACC, VAL_LOSS
from aqtrack.plots import NOT_MEASURED, Curves, confusion_matrix_figure, training_curves

PNG = b"\x89PNG\r\n\x1a\n"


def line(fig, key: str):
    (found,) = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label() == key]
    return found


def axes_titled(fig, title: str):
    (ax,) = [ax for ax in fig.axes if ax.get_title() == title]
    return ax


def test_missing_epochs_are_gaps_never_filled_in():
    # Epoch 3 has no train_loss; epoch 4 has nothing at all (not even a slot in the points).
    points = {TRAIN_LOSS: {1: 1.5, 2: 1.2, 5: 0.9}, VAL_LOSS: {1: 1.6, 2: 1.3, 3: 1.1, 5: 1.0}}
    fig = training_curves(Curves.from_points(points))

    train = line(fig, TRAIN_LOSS)
    assert list(train.get_xdata()) == [1, 2, 3, 4, 5]
    y = train.get_ydata()
    assert y[:2].tolist() == [1.5, 1.2] and math.isnan(y[2]) and math.isnan(y[3]) and y[4] == 0.9
    val = line(fig, VAL_LOSS).get_ydata()
    assert val[2] == 1.1 and math.isnan(val[3])


def test_unmeasured_metrics_are_labelled_not_drawn():
    fig = training_curves(Curves.from_points({TRAIN_LOSS: {1: 1.0}, LR: {1: None}}))
    lr_axes = axes_titled(fig, "learning rate")
    assert lr_axes.get_lines() == []
    assert any(NOT_MEASURED in t.get_text() and "lr" in t.get_text() for t in lr_axes.texts)
    assert not [ln for ln in fig.axes[1].get_lines()]  # accuracy: nothing measured, nothing drawn
    assert any(VAL_ACC in t.get_text() for t in fig.axes[1].texts)


def test_gradient_norm_and_lr_are_on_log_axes_with_threshold_bands():
    points = {GRAD_NORM: {1: 0.005, 2: 1.0, 3: 25.0}, LR: {1: 1e-3, 2: 5e-4, 3: 1e-6}}
    fig = training_curves(Curves.from_points(points))

    grad = axes_titled(fig, "gradient norm (pre-clip)")
    assert grad.get_yscale() == "log" and axes_titled(fig, "learning rate").get_yscale() == "log"
    assert axes_titled(fig, "loss").get_yscale() == "linear"
    bands = {}
    for patch in grad.patches:
        assert isinstance(patch, (Polygon, Rectangle))
        ys = (
            patch.get_xy()[:, 1]
            if isinstance(patch, Polygon)
            else [patch.get_y(), patch.get_y() + patch.get_height()]
        )
        bands[patch.get_label()] = (min(ys), max(ys))
    low, high = grad.get_ylim()
    assert bands == {
        f"explosion (> {GRAD_EXPLOSION:g})": (GRAD_EXPLOSION, high),
        f"vanishing (< {GRAD_VANISHING:g})": (low, GRAD_VANISHING),
    }
    assert low < 0.005 and high > 25.0  # every measured value in view
    assert line(fig, GRAD_NORM).get_ydata().tolist() == [0.005, 1.0, 25.0]


def test_confusion_matrix_shows_each_count():
    counts = np.array([[5, 1], [2, 7]])
    fig = confusion_matrix_figure(counts, ["good", "bad"])
    (ax,) = [a for a in fig.axes if a.texts]
    assert sorted(t.get_text() for t in ax.texts) == ["1", "2", "5", "7"]
    assert "accuracy 0.800 on 15" in ax.get_title()


def test_aqtrack_plot_draws_an_experiment_report(tmp_path, capsys):
    report = {
        "control_losses": [1.0, None, 0.8],
        "grad_norms": [2.0, 3.0, 50.0],
        "learning_rates": [1e-3] * 3,
    }
    path = tmp_path / "experiment_report.json"
    path.write_text(json.dumps(report))

    assert main(["plot", str(path), "-o", str(tmp_path / "curves.png")]) == 0

    assert (tmp_path / "curves.png").read_bytes().startswith(PNG)
    assert capsys.readouterr().out.strip() == str(tmp_path / "curves.png")
    fig = aqtrack.plot_curves(path)
    assert math.isnan(line(fig, TRAIN_LOSS).get_ydata()[1])
    assert line(fig, GRAD_NORM).get_ydata().tolist() == [2.0, 3.0, 50.0]


def test_aqtrack_plot_draws_a_runs_metrics_with_its_gaps(tmp_path, monkeypatch):
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("plots")).info.run_id
    client.log_batch(run_id, metrics=[Metric(TRAIN_LOSS, v, 0, s) for s, v in ((1, 1.0), (2, 0.9), (4, 0.7))])
    monkeypatch.chdir(tmp_path)

    assert main(["plot", run_id]) == 0  # -o defaults to training_curves.png

    assert (tmp_path / "training_curves.png").read_bytes().startswith(PNG)
    y = line(aqtrack.plot_curves(run_id), TRAIN_LOSS).get_ydata()
    assert y[0] == 1.0 and math.isnan(y[2]) and y[3] == 0.7


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("missing.json", "missing.json: no such file; pass a run id or an experiment_report.json"),
        ("0" * 32, f"plot {'0' * 32}: no such run in "),
    ],
)
def test_aqtrack_plot_of_a_bad_source_says_so_in_one_line(capsys, source, error):
    assert main(["plot", source]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"aqtrack: error: {error}"), err


def test_aqtrack_plot_to_an_unwritable_file_says_so(tmp_path, capsys):
    path = tmp_path / "experiment_report.json"
    path.write_text(json.dumps({"control_losses": [1.0]}))
    (tmp_path / "blocker").write_text("a file, not a directory")
    assert main(["plot", str(path), "-o", str(tmp_path / "blocker" / "curves.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "curves.png: not writable" in err[0], err


class RecordingTracker:
    """Records the tags the hook queues (a NullTracker that remembers)."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}

    def set_tags(self, tags) -> None:
        self.tags.update(tags)


def replay(norms: list[float], tracker: RecordingTracker, start: int = 0) -> None:
    """Feed a fresh hook (a new process) epochs start+1.. of `norms`, as the loop would."""
    hook = gradient_alerts(tracker)
    state = TrainState(config={}, model_spec={}, history=History())
    for epoch, value in enumerate(norms, 1):
        state.history.append({GRAD_NORM: value}, [])
        state.epoch = epoch
        if epoch > start:
            hook(state)


NORMS = [2.0, 12.0, 15.0, 11.0, 1.0, 0.001, 1.0, 30.0]


def test_gradient_alerts_warn_once_per_epoch_and_tag_compact_ranges(caplog):
    tracker = RecordingTracker()
    with caplog.at_level(logging.WARNING, logger="aqtrack"):
        replay(NORMS, tracker)

    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 5
    assert warned[0].startswith("epoch 2: grad_norm 12 is above 10: exploding gradients")
    assert warned[3].startswith("epoch 6: grad_norm 0.001 is below 0.01: vanishing gradients")
    assert tracker.tags == {TAG_GRAD_EXPLOSION_EPOCHS: "2-4,8", TAG_GRAD_VANISHING_EPOCHS: "6"}
    assert compact_ranges([1, 3, 4, 5, 9]) == "1,3-5,9"


def test_gradient_alert_tags_of_a_resumed_run_equal_an_uninterrupted_ones():
    straight, resumed = RecordingTracker(), RecordingTracker()
    replay(NORMS, straight)
    replay(NORMS[:5], resumed)
    replay(NORMS, resumed, start=5)  # a new process, from epoch 5's checkpoint
    assert resumed.tags == straight.tags


def test_exploding_gradients_in_real_training_are_warned_and_tagged(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="aqtrack"):
        result = aqtrack.train(**{**tiny, "rounds": 1, "epochs_per_round": 3, "lr": 30.0, "svm": False})

    norms = result.history.metrics[GRAD_NORM]
    exploded = [e for e, v in enumerate(norms, 1) if v > GRAD_EXPLOSION]
    assert exploded  # lr 30 blows the first epoch's gradients up (to about 100: far past 10)
    tags = MlflowClient().get_run(result.run_id).data.tags
    assert tags[TAG_GRAD_EXPLOSION_EPOCHS] == compact_ranges(exploded)
    assert [r.getMessage().split(":")[0] for r in caplog.records if "exploding" in r.getMessage()] == [
        f"epoch {e}" for e in exploded
    ]
