"""MLproject and conda.yaml stay in step with CLI and pyproject; a real `mlflow run` trains and resumes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from mlflow import MlflowClient

import aqtrack
from aqtrack.checkpoint import BEST, LAST
from aqtrack.config import Config, flag, parse_bool
from aqtrack.metrics import METRIC_KEYS

REPO = Path(__file__).resolve().parents[1]


def mlproject_main() -> dict:
    return yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["main"]


def test_mlproject_parameters_are_exactly_the_cli_settings_with_the_same_defaults():
    params = mlproject_main()["parameters"]
    defaults = Config().to_dict()

    assert set(params) == set(defaults) | {"resume_run_id"}
    for name, default in defaults.items():
        declared = params[name]["default"]
        if isinstance(default, bool):
            assert parse_bool(declared) == default, name
        elif isinstance(default, str):
            assert (declared or "") == default, name
        else:
            assert float(declared) == default, name
    assert params["resume_run_id"]["default"] == ""


def test_mlproject_command_passes_every_parameter_to_its_flag():
    command = mlproject_main()["command"]
    assert command.startswith("python -m aqtrack train --from-mlproject --resume {resume_run_id}")
    for name in Config().to_dict():
        assert f"{flag(name)} {{{name}}}" in command, name


def test_conda_env_lists_the_same_dependencies_as_pyproject():
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip_deps = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert sorted(pip_deps) == sorted(project["dependencies"])


def mlflow_run(tmp_path: Path, mlflow_store: str, params: dict) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_store,
        # `python` in the MLproject command must be this interpreter, with aqtrack importable.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    p_args = [arg for k, v in params.items() for arg in ("-P", f"{k}={v}")]
    command = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local"]
    command += ["--experiment-name", "action-quality", *p_args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def points(run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient()
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in METRIC_KEYS}


def test_mlflow_run_trains_then_resumes_into_its_own_run_with_the_whole_history(tmp_path, mlflow_store, tiny):
    client = MlflowClient()
    first = mlflow_run(tmp_path, mlflow_store, {**tiny, "rounds": 1, "svm": "false"})
    assert first.returncode == 0, first.stderr[-3000:]
    (a,) = client.search_runs([client.get_experiment_by_name("action-quality").experiment_id])
    assert a.info.status == "FINISHED"
    assert [s for s, _ in points(a.info.run_id)["val_acc"]] == [1, 2]

    second = mlflow_run(tmp_path, mlflow_store, {**tiny, "rounds": 2, "resume_run_id": a.info.run_id})
    assert second.returncode == 0, second.stderr[-3000:]

    b = next(r for r in client.search_runs([a.info.experiment_id]) if r.info.run_id != a.info.run_id)
    assert b.info.status == "FINISHED"
    assert b.data.tags["aqtrack.resumed_from"] == a.info.run_id
    # MLflow's generated names, made readable; the description says where b came from
    assert re.fullmatch(r"synthetic-h8-1x2-[a-z]+-[a-z]+-\d+", a.info.run_name), a.info.run_name
    assert re.fullmatch(r"synthetic-h8-2x2-[a-z]+-[a-z]+-\d+", b.info.run_name), b.info.run_name
    assert f"**Resumed** from run `{a.info.run_id}` at epoch 2." in b.data.tags["mlflow.note.content"]
    assert client.get_run(a.info.run_id).data.tags["aqtrack.continued_in"] == b.info.run_id
    # -P svm=false skipped the SVM stage; the resume, not given it, kept the run's setting
    assert a.data.params["svm"] == "false"
    assert not {"svm_val_acc", "svm_val_f1"} & (set(a.data.metrics) | set(b.data.metrics))
    names = {Path(f.path).name for f in client.list_artifacts(b.info.run_id, "checkpoints")}
    assert {LAST, BEST} <= names
    straight = aqtrack.train(**tiny)  # the same 4 epochs in one go, in this process
    assert points(b.info.run_id) == points(straight.run_id)
    assert [s for s, _ in points(a.info.run_id)["val_acc"]] == [1, 2]  # the source run is unchanged
