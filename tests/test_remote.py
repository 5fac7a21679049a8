"""Against a real `mlflow server` on 127.0.0.1 (HTTP, artifacts proxied): train, then resume by run id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow_server import MlflowServer

import aqtrack
from aqtrack.checkpoint import BEST, LAST
from aqtrack.metrics import METRIC_KEYS


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` with its own sqlite store and proxied artifacts in a temp dir; stopped by PID."""
    server = MlflowServer(tmp_path_factory.mktemp("server")).start()
    try:
        yield server.url
    finally:
        server.stop()


def test_train_and_resume_over_http_keep_one_point_per_epoch_and_proxied_checkpoints(
    mlflow_server, monkeypatch, tiny, tmp_path
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    first = aqtrack.train(**{**tiny, "rounds": 1})
    resumed = aqtrack.train(resume=first.run_id, rounds=2)

    client = MlflowClient(mlflow_server)
    assert resumed.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert client.get_run(first.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    for key in METRIC_KEYS:
        assert [m.step for m in client.get_metric_history(first.run_id, key)] == [1, 2, 3, 4], key
    names = {Path(f.path).name for f in client.list_artifacts(first.run_id, "checkpoints")}
    assert {LAST, BEST, "action_quality_round_2_epoch_2.pt"} <= names
    report = aqtrack.rebuild_report(first.run_id, tmp_path / "report")
    assert '"current_epoch": 4' in report.read_text()
