"""MLproject and conda.yaml stay in step with CLI and pyproject; a real `mlflow run` trains and resumes."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow import MlflowClient

import aqtrack
from aqtrack.cli import CV_MLPROJECT_PARAMETERS, MLPROJECT_PARAMETERS
from aqtrack.config import Config
from aqtrack.names import BEST, LAST, METRIC_KEYS
from aqtrack.tracking.lock import run_lock

REPO = Path(__file__).resolve().parents[1]


def mlproject_main() -> dict:
    return yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["main"]


def test_mlproject_declares_no_parameter_so_only_the_given_ones_reach_aqtrack():
    # A declared parameter reaches the command with its default when not given, and MLflow logs that
    # default as the run's param: a resume could not tell `-P rounds=3` from nothing.
    main = mlproject_main()
    assert "parameters" not in main
    assert main["command"] == "python -m aqtrack train --from-mlproject"


def test_the_cv_entry_point_cross_validates_and_declares_no_parameter_either():
    cv = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["cv"]
    assert cv == {"command": "python -m aqtrack cv --from-mlproject"}
    names = set(Config().to_dict()) | {"resume_run_id", "jobs"}
    assert set(CV_MLPROJECT_PARAMETERS) == names


def test_every_setting_is_an_mlproject_parameter_of_the_same_name():
    names = set(Config().to_dict()) | {"resume_run_id", "fork_run_id", "fork_epoch"}
    assert set(MLPROJECT_PARAMETERS) == names
    text = (REPO / "MLproject").read_text()
    assert all(name in text for name in ("resume_run_id", "fork_run_id", "fork_epoch"))


def test_conda_env_lists_the_same_dependencies_as_pyproject():
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip_deps = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert sorted(pip_deps) == sorted(project["dependencies"])


def mlflow_run(
    tmp_path: Path, mlflow_store: str, params: dict, entry_point: str = "main"
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_store,
        # `python` in the MLproject command must be this interpreter, with aqtrack importable.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    p_args = [arg for k, v in params.items() for arg in ("-P", f"{k}={v}")]
    command = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry_point, "--env-manager", "local"]
    command += ["--experiment-name", "action-quality", *p_args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def points(run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient()
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in METRIC_KEYS}


def runs_of(experiment: str = "action-quality") -> list:
    client = MlflowClient()
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_mlflow_run_resume_with_rounds_equal_to_the_default_trains_to_it(tmp_path, mlflow_store, tiny):
    # The headline flow that failed: a value given with -P that equals its default counted as not given.
    client = MlflowClient()
    first = mlflow_run(tmp_path, mlflow_store, {**tiny, "svm": "false"})  # 2 rounds; the default is 3
    assert first.returncode == 0, first.stderr[-3000:]
    (a,) = runs_of()
    assert a.info.status == "FINISHED"
    assert [s for s, _ in points(a.info.run_id)["val_acc"]] == [1, 2, 3, 4]
    assert a.data.params["lr"] == "0.001" and a.data.params["rounds"] == "2"  # real values on its page

    second = mlflow_run(tmp_path, mlflow_store, {"resume_run_id": a.info.run_id, "rounds": "3.0"})
    assert second.returncode == 0, second.stderr[-3000:]

    b = next(r for r in runs_of() if r.info.run_id != a.info.run_id)
    assert b.info.status == "FINISHED"
    assert b.data.tags["aqtrack.resumed_from"] == a.info.run_id
    assert b.data.tags["aqtrack.rounds"] == "3"
    assert b.data.params["svm"] == "false" and b.data.params["hidden"] == "8"  # the run's own settings
    # MLflow's generated names, made readable; the description says where b came from
    assert re.fullmatch(r"synthetic-h8-2x2-[a-z]+-[a-z]+-\d+", a.info.run_name), a.info.run_name
    assert re.fullmatch(r"synthetic-h8-3x2-[a-z]+-[a-z]+-\d+", b.info.run_name), b.info.run_name
    assert f"**Resumed** from run `{a.info.run_id}` at epoch 4." in b.data.tags["mlflow.note.content"]
    assert client.get_run(a.info.run_id).data.tags["aqtrack.continued_in"] == b.info.run_id
    assert not {"svm_val_acc", "svm_val_f1"} & (set(a.data.metrics) | set(b.data.metrics))
    names = {Path(f.path).name for f in client.list_artifacts(b.info.run_id, "checkpoints")}
    assert {LAST, BEST} <= names
    straight = aqtrack.train(**{**tiny, "rounds": 3, "svm": False})  # the same 6 epochs in one go
    assert points(b.info.run_id) == points(straight.run_id)
    assert [s for s, _ in points(a.info.run_id)["val_acc"]] == [1, 2, 3, 4]  # the source is unchanged


def test_mlflow_run_resume_without_rounds_continues_to_the_runs_own_total(tmp_path, mlflow_store, tiny):
    def stop_after_epoch_2(state):
        if state.epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        aqtrack.train(**{**tiny, "svm": False}, callbacks=[stop_after_epoch_2])
    (a,) = runs_of()

    done = mlflow_run(tmp_path, mlflow_store, {"resume_run_id": a.info.run_id})

    assert done.returncode == 0, done.stderr[-3000:]
    b = next(r for r in runs_of() if r.info.run_id != a.info.run_id)
    assert [s for s, _ in points(b.info.run_id)["val_acc"]] == [1, 2, 3, 4]
    assert b.data.tags["aqtrack.rounds"] == "2"


def test_mlflow_run_cv_makes_its_run_the_parent_with_the_folds_nested_under_it(tmp_path, mlflow_store, tiny):
    params = {**tiny, "folds": 2, "rounds": 1, "svm": "false", "jobs": 1}
    done = mlflow_run(tmp_path, mlflow_store, params, entry_point="cv")

    assert done.returncode == 0, done.stderr[-3000:]
    runs = runs_of()
    (parent,) = [r for r in runs if "aqtrack.cv" in r.data.tags]  # the run `mlflow run` made
    assert parent.info.status == "FINISHED" and parent.data.tags["mlflow.project.entryPoint"] == "cv"
    assert re.fullmatch(r"cv2-synthetic-h8-1x2-[a-z]+-[a-z]+-\d+", parent.info.run_name), parent.info.run_name
    folds = [r for r in runs if r is not parent]
    assert sorted(r.data.tags["aqtrack.cv_fold"] for r in folds) == ["1", "2"]
    assert {r.data.tags["mlflow.parentRunId"] for r in folds} == {parent.info.run_id}
    assert all(r.info.status == "FINISHED" for r in folds)
    assert parent.data.metrics["cv_folds_finished"] == 2


def test_mlflow_run_cv_with_a_train_only_parameter_is_one_error_line(tmp_path, mlflow_store):
    done = mlflow_run(tmp_path, mlflow_store, {"folds": 2, "fork_run_id": "x"}, entry_point="cv")
    errors = [line for line in done.stderr.splitlines() if line.startswith("aqtrack: error:")]
    assert len(errors) == 1 and "-P fork_run_id: not a parameter of this entry point" in errors[0]
    assert "resume_run_id (a cross-validation) and jobs" in errors[0]


def test_mlflow_run_with_a_fractional_integer_parameter_is_one_error_line_and_a_failed_run(
    tmp_path, mlflow_store
):
    done = mlflow_run(tmp_path, mlflow_store, {"rounds": "1.5"})

    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("aqtrack: error:")]
    assert errors == [
        "aqtrack: error: -P rounds / --rounds: expected a whole number (got '1.5'); "
        "see `aqtrack train --help`"
    ]
    assert "usage:" not in done.stderr
    (run,) = runs_of()
    assert run.info.status == "FAILED"


def test_when_the_mlflow_run_process_dies_training_stops_as_on_sigterm(tmp_path, mlflow_store, tiny):
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_store,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    params = {**tiny, "rounds": 1, "epochs_per_round": 500, "svm": "false"}
    p_args = [arg for k, v in params.items() for arg in ("-P", f"{k}={v}")]
    command = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", *p_args]
    command += ["--experiment-name", "action-quality"]
    launcher = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    try:
        training = wait_for_training(launcher, epoch=2)
        launcher.kill()  # SIGKILL: `mlflow run` cannot pass anything on
        launcher.wait(timeout=30)
        training.wait(timeout=60)  # psutil: the orphan must stop by itself
    finally:
        for process in [launcher, *psutil.Process().children(recursive=True)]:
            with contextlib.suppress(Exception):
                process.kill()
    (run,) = runs_of()
    assert run.info.status == "KILLED"
    published = int(run.data.tags["aqtrack.checkpoint_epoch"])
    assert [s for s, _ in points(run.info.run_id)["val_acc"]] == list(range(1, published + 1))
    assert published < 500
    with run_lock(mlflow_store, run.info.run_id):  # released: it can be resumed at once
        pass


def wait_for_training(launcher: subprocess.Popen, epoch: int) -> psutil.Process:
    """The aqtrack process `mlflow run` started, once its run has published `epoch`."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert launcher.poll() is None, "mlflow run ended early"
        experiment = MlflowClient().get_experiment_by_name("action-quality")
        runs = MlflowClient().search_runs([experiment.experiment_id]) if experiment else []
        if runs and int(runs[0].data.tags.get("aqtrack.checkpoint_epoch", 0)) >= epoch:
            children = psutil.Process(launcher.pid).children(recursive=True)
            return next(p for p in children if "aqtrack" in " ".join(p.cmdline()))
        time.sleep(0.2)
    pytest.fail(f"epoch {epoch} not published within 120 s")
