"""Run hygiene on a real sqlite store: readable names, the run description, tags, system metrics."""

from __future__ import annotations

import re
import time
from importlib.metadata import version

import pytest
from crashes import stop_at
from mlflow import MlflowClient

import aqtrack
from aqtrack.names import NOTE_TAG, SVM_VAL_ACC
from aqtrack.tracking.describe import RESULTS_PENDING

GENERATED = r"[a-z]+-[a-z]+-\d+"


def started_run_names(settings: dict, callbacks=(), runs: int = 1) -> list[str]:
    """The names of `runs` new runs, newest first. A run is named when it starts, so each is stopped
    after its first epoch rather than trained to the end and finished."""
    for _ in range(runs):
        with pytest.raises(KeyboardInterrupt):
            aqtrack.train(**settings, callbacks=[*callbacks, stop_at(1, KeyboardInterrupt())])
    client = MlflowClient()
    experiment = client.get_experiment_by_name(settings.get("experiment", "action-quality"))
    return [r.info.run_name for r in client.search_runs([experiment.experiment_id])]


def test_a_new_run_gets_a_readable_name_saying_what_it_trains(tiny):
    (name,) = started_run_names(tiny)
    assert re.fullmatch(rf"synthetic-h8-2x2-{GENERATED}", name), name


def test_runs_with_the_same_seed_get_different_names(tiny):
    names = set(started_run_names(tiny, runs=3))
    assert len(names) == 3, names


def test_naming_a_run_leaves_the_seeded_python_rng_as_training_set_it(tiny):
    import random

    seen = []
    started_run_names({**tiny, "rounds": 1}, callbacks=[lambda state: seen.append(random.random())])
    random.seed(42)  # what build_trainer's seed_everything(42) left, untouched by creating the run
    assert seen[0] == random.random()


def test_a_resumed_run_keeps_its_name_unless_run_name_is_given(tiny):
    first = aqtrack.train(**{**tiny, "rounds": 1})
    name = MlflowClient().get_run(first.run_id).info.run_name
    aqtrack.train(resume=first.run_id, rounds=2)
    assert MlflowClient().get_run(first.run_id).info.run_name == name
    aqtrack.train(resume=first.run_id, rounds=3, run_name="longer")
    assert MlflowClient().get_run(first.run_id).info.run_name == "longer"


def test_a_given_run_name_is_used_as_is(tiny):
    assert started_run_names({**tiny, "run_name": "baseline"}) == ["baseline"]


def test_tags_say_version_data_source_and_resume_history(tiny):
    first = aqtrack.train(**{**tiny, "rounds": 1})
    tags = MlflowClient().get_run(first.run_id).data.tags
    assert tags["aqtrack.version"] == version("aqtrack")
    assert tags["aqtrack.data_source"] == "synthetic"
    assert "aqtrack.resume_count" not in tags and "aqtrack.resumed_from" not in tags
    aqtrack.train(resume=first.run_id, rounds=2)
    aqtrack.train(resume=first.run_id, rounds=3)
    assert MlflowClient().get_run(first.run_id).data.tags["aqtrack.resume_count"] == "2"


def test_description_summarises_config_data_and_final_results(tiny):
    result = aqtrack.train(**{**tiny, "svm": False})
    note = MlflowClient().get_run(result.run_id).data.tags[NOTE_TAG]
    assert "2 rounds x 2 epochs" in note and "hidden 8" in note and "adamw lr 0.001" in note
    assert "**Data**: synthetic: 64 train / 32 val / 32 test sequences, " in note
    assert "subjects, split by subject, 8 channels x 100 frames, 4 classes" in note
    assert RESULTS_PENDING not in note
    assert (
        f"4 of 4 epochs; best epoch {result.best_epoch} by val_acc (**{result.best_val_acc:.4f}**); " in note
    )
    test = MlflowClient().get_run(result.run_id).data.metrics
    assert (
        f"test_acc **{test['test_acc']:.4f}**, test_balanced_acc **{test['test_balanced_acc']:.4f}**" in note
    )
    final_val_loss = result.history.metrics["val_loss"][-1]
    assert f"val_loss {final_val_loss:.4f}" in note
    assert f"`aqtrack train --resume {result.run_id}`" in note
    assert "SVM" not in note  # --no-svm: this run has no SVM score


def test_description_of_a_stopped_run_says_training_and_how_to_continue(tiny):
    class Stop(Exception):
        pass

    def stop_after_first_epoch(state):
        raise Stop

    with pytest.raises(Stop):
        aqtrack.train(**tiny, callbacks=[stop_after_first_epoch])
    run = MlflowClient().search_runs(MlflowClient().get_experiment_by_name("action-quality").experiment_id)[0]
    note = run.data.tags[NOTE_TAG]
    assert RESULTS_PENDING in note and f"aqtrack train --resume {run.info.run_id}" in note


def test_description_of_a_resumed_run_says_from_where_and_gives_the_svm_score(tiny):
    first = aqtrack.train(**{**tiny, "rounds": 1, "svm": False})
    assert "SVM" not in MlflowClient().get_run(first.run_id).data.tags[NOTE_TAG]

    aqtrack.train(resume=first.run_id, rounds=2, svm=True)  # the SVM stage runs at the end of this one
    run = MlflowClient().get_run(first.run_id)
    note = run.data.tags[NOTE_TAG]
    assert "**Resumed** at epoch 2 (resume #1)" in note
    assert "4 of 4 epochs" in note
    score = run.data.metrics[SVM_VAL_ACC]
    assert f"**SVM** on the best network's features: val_acc **{score:.4f}**" in note


def test_system_metrics_are_logged_only_with_the_flag(tiny, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")

    def slow_epoch(state):  # a few sampling intervals per run, on any machine
        time.sleep(0.3)

    with_flag = aqtrack.train(**tiny, system_metrics=True, callbacks=[slow_epoch])
    without = aqtrack.train(**tiny, callbacks=[slow_epoch])
    logged = MlflowClient().get_run(with_flag.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in logged
    assert "system/system_memory_usage_megabytes" in logged
    assert len(MlflowClient().get_metric_history(with_flag.run_id, "system/cpu_utilization_percentage")) >= 2
    assert not [k for k in MlflowClient().get_run(without.run_id).data.metrics if k.startswith("system/")]
