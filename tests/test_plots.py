"""Figures show measured values only (gaps where an epoch has none), gradient norm and lr on log axes
with the run's own explosion/vanishing bands; `aqtrack plot` draws a run or a report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

import aqtrack
from aqtrack.cli import main
from aqtrack.names import GRAD_NORM, LR, TRAIN_LOSS, VAL_ACC, VAL_LOSS
from aqtrack.outputs.alerts import thresholds
from aqtrack.outputs.plots import NOT_MEASURED, Curves, confusion_matrix_figure, training_curves

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


def test_gradient_norm_and_lr_are_on_log_axes_with_the_runs_own_threshold_bands():
    norms = [6.0, 3.0, 2.0, 2.5, 40.0, 0.005]
    points = {GRAD_NORM: dict(enumerate(norms, 1)), LR: {e: 1e-3 / e for e in range(1, 7)}}
    fig = training_curves(Curves.from_points(points))

    grad = axes_titled(fig, "gradient norm (pre-clip)")
    assert grad.get_yscale() == "log" and axes_titled(fig, "learning rate").get_yscale() == "log"
    assert axes_titled(fig, "loss").get_yscale() == "linear"
    low, high = grad.get_ylim()
    bands = {}
    for patch in grad.collections:
        (path,) = patch.get_paths()
        ys = path.vertices[:, 1]
        bands[patch.get_label()] = (ys.min(), ys.max())
    limits = thresholds(norms)  # from epoch 4 on: 10x the median before, the early median / 100
    assert [h for h, _ in limits] == [None, None, None, 30.0, 27.5, 30.0]
    assert bands["exploding (> 10x recent median)"] == pytest.approx((27.5, high))
    assert [v for _, v in limits][3:] == pytest.approx([0.03, 0.0275, 0.03])
    assert bands["vanishing (< early median / 100)"] == pytest.approx((low, 0.03))
    assert low < 0.005 and high > 40.0  # every measured value in view
    assert line(fig, GRAD_NORM).get_ydata().tolist() == norms


def test_confusion_matrix_shows_each_count():
    counts = np.array([[5, 1], [2, 7]])
    fig = confusion_matrix_figure(counts, ["good", "bad"])
    (ax,) = [a for a in fig.axes if a.texts]
    assert sorted(t.get_text() for t in ax.texts) == ["1", "2", "5", "7"]
    assert "accuracy 0.800, balanced 0.806 on 15" in ax.get_title()


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


def test_cv_folds_figure_draws_each_score_per_fold_with_its_mean():
    from aqtrack.outputs.plots import cv_folds_figure

    scores = {"test_acc": [0.8, 0.6, 0.7], "test_f1_macro": [0.75, 0.55, 0.65]}
    fig = cv_folds_figure([1, 2, 3], scores, title="folds")

    (ax,) = fig.axes
    heights = [round(p.get_height(), 6) for p in ax.patches]
    assert heights == [0.8, 0.6, 0.7, 0.75, 0.55, 0.65]  # one bar per fold and score, as measured
    means = sorted(round(ln.get_ydata()[0], 6) for ln in ax.get_lines())
    assert means == [0.65, 0.7]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"] and ax.get_title() == "folds"
