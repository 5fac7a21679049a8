"""Gradient alerts: an epoch is exploding or vanishing against the run's own gradient norms, warned
about once and kept as run tags; healthy trainings on the test data stay quiet."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from fakes import RecordingTracker
from mlflow import MlflowClient

import aqtrack
from aqtrack.jobs import pipeline
from aqtrack.names import GRAD_NORM, TAG_GRAD_EXPLOSION_EPOCHS, TAG_GRAD_VANISHING_EPOCHS, TRAIN_LOSS
from aqtrack.outputs.alerts import alert_epochs, alert_tags, compact_ranges, gradient_alerts, thresholds
from aqtrack.training.checkpoint import History, TrainState

# Measured on this project's test data (15 epochs each, default model unless said; see the README's
# "Gradient alerts"): the old fixed threshold of 10 fired at epoch 1 of the imbalanced run.
HEALTHY = {
    "synthetic default": [
        4.5,
        3.0,
        2.82,
        3.09,
        2.7,
        2.87,
        3.06,
        2.89,
        2.53,
        2.64,
        2.39,
        2.36,
        2.34,
        2.4,
        2.16,
    ],
    "synthetic, batch 8": [
        9.33,
        6.42,
        6.36,
        6.04,
        5.52,
        6.0,
        5.07,
        4.6,
        4.62,
        4.23,
        4.38,
        3.81,
        3.51,
        3.3,
        3.7,
    ],
    "variable length 30-100": [5.47, 4.25, 3.51, 3.35, 3.12, 2.81, 2.49, 2.52, 2.4, 2.44, 2.64, 2.31, 2.27],
    "imbalanced 10:1": [10.99, 4.4, 4.02, 2.87, 2.83, 2.86, 2.24, 2.18, 2.17, 2.31, 1.8, 2.12, 2.01, 1.78],
    "8 classes, 3 channels": [
        6.12,
        4.67,
        3.34,
        3.48,
        2.76,
        3.1,
        2.55,
        2.77,
        2.88,
        2.41,
        2.5,
        2.4,
        2.18,
        2.04,
    ],
}


def replay(norms: list[float], tracker: RecordingTracker, start: int = 0, losses=None) -> None:
    """Feed a fresh hook (a new process) epochs start+1.. of `norms`, as the loop would."""
    hook = gradient_alerts(tracker)
    state = TrainState(config={}, model_spec={}, history=History())
    for epoch, value in enumerate(norms, 1):
        loss = 1.0 if losses is None else losses[epoch - 1]
        state.history.append({GRAD_NORM: value, TRAIN_LOSS: loss}, [])
        state.epoch = epoch
        if epoch > start:
            hook(state)


# Epochs 1-3 only make the baseline (median 3); 5 jumps 13x; 7 collapses to under 1/100 of the early
# median while the loss is still high; 9 jumps again against the recent median (about 3).
NORMS = [4.0, 3.0, 2.0, 3.5, 40.0, 3.0, 0.01, 2.5, 35.0, 3.0]


@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_healthy_trainings_measured_on_the_test_data_raise_no_alert(name):
    norms = HEALTHY[name]
    assert alert_epochs(norms, [2.0 - 0.05 * e for e in range(len(norms))]) == ([], [])


def test_thresholds_are_10x_the_median_before_and_the_early_median_over_100():
    norms = [6.0, 3.0, 2.0, 2.5, 40.0, 0.005]  # what tests/test_plots.py draws the bands of
    limits = thresholds(norms)  # from epoch 4 on: 10x the median before, the early median / 100
    assert [h for h, _ in limits] == [None, None, None, 30.0, 27.5, 30.0]
    assert [v for _, v in limits][3:] == pytest.approx([0.03, 0.0275, 0.03])


def test_the_first_epochs_are_never_judged_however_large_their_norms():
    assert alert_epochs([500.0, 300.0, 100.0]) == ([], [])


def test_gradient_alerts_warn_once_per_epoch_and_tag_compact_ranges(caplog):
    tracker = RecordingTracker()
    with caplog.at_level(logging.WARNING, logger="aqtrack"):
        replay(NORMS, tracker)

    warned = [r.getMessage() for r in caplog.records]
    assert [w.split(":")[0] for w in warned] == ["epoch 5", "epoch 7", "epoch 9"]
    assert warned[0].startswith("epoch 5: grad_norm 40 is over 10x the median of the epochs before")
    assert "exploding gradients" in warned[0]
    assert warned[1].startswith("epoch 7: grad_norm 0.01 fell below 1/100 of its early median")
    assert tracker.tags == {TAG_GRAD_EXPLOSION_EPOCHS: "5,9", TAG_GRAD_VANISHING_EPOCHS: "7"}
    assert compact_ranges([1, 3, 4, 5, 9]) == "1,3-5,9"


def test_small_gradients_of_a_network_that_fitted_its_data_are_not_vanishing():
    losses = [1.4, 1.0, 0.8, 0.7, 0.5, 0.3, 0.05, 0.04, 0.03, 0.03]  # below a tenth of 1.4 from epoch 7
    assert alert_tags(NORMS, losses) == {TAG_GRAD_EXPLOSION_EPOCHS: "5,9"}


def test_gradient_alert_tags_of_a_resumed_run_equal_an_uninterrupted_ones():
    straight, resumed = RecordingTracker(), RecordingTracker()
    replay(NORMS, straight)
    replay(NORMS[:5], resumed)
    replay(NORMS, resumed, start=5)  # a new process, from epoch 5's checkpoint
    assert resumed.tags == straight.tags


def test_a_healthy_real_training_stays_quiet_and_a_gradient_spike_is_warned_and_tagged(
    tiny, caplog, monkeypatch
):
    settings = {**tiny, "rounds": 1, "epochs_per_round": 6, "svm": False}
    quiet = aqtrack.train(**settings)
    tags = MlflowClient().get_run(quiet.run_id).data.tags
    assert TAG_GRAD_EXPLOSION_EPOCHS not in tags and TAG_GRAD_VANISHING_EPOCHS not in tags

    built = []
    real_build = pipeline.build_trainer
    monkeypatch.setattr(pipeline, "build_trainer", lambda *a: built.append(real_build(*a)) or built[-1])

    def spike_after_epoch_4(state):  # logits scaled a thousandfold: so is every gradient behind them
        if state.epoch == 4:
            with torch.no_grad():
                built[0].model.head[-1].weight.mul_(1000.0)

    with caplog.at_level(logging.WARNING, logger="aqtrack"):
        result = aqtrack.train(**settings, callbacks=[spike_after_epoch_4])

    norms = result.history.metrics[GRAD_NORM]
    assert norms[4] > 10 * np.median(norms[:4])  # epoch 5 trained with the scaled head
    tags = MlflowClient().get_run(result.run_id).data.tags
    assert tags[TAG_GRAD_EXPLOSION_EPOCHS].startswith("5")
    assert any(r.getMessage().startswith("epoch 5: grad_norm") for r in caplog.records)
