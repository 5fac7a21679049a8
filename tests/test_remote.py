"""Against a real `mlflow server` on 127.0.0.1 (HTTP, artifacts proxied): train, then resume by run id."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

import aqtrack
from aqtrack.checkpoint import BEST, LAST
from aqtrack.metrics import METRIC_KEYS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` with its own sqlite store and proxied artifacts in a temp dir; stopped by PID."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", f"sqlite:///{root / 'server.db'}"]
    command += ["--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed below, after the server stops
    server = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, server, root / "server.log")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {timeout} s: {log.read_text()[-2000:]}")


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
