"""The tracking server goes away mid-training (a real `mlflow server` on 127.0.0.1, stopped or frozen
from an epoch callback). Training goes on, keeps everything locally and catches the run up when the
server is back, one point per epoch; past --tracking-patience it stops, and a resume continues from
the local checkpoint, which is newer than the run's."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from mlflow_server import MlflowServer

import aqtrack
from aqtrack.errors import TrackingLost
from aqtrack.names import CHECKPOINT_EPOCH_TAG, LAST, MANIFEST_SUFFIX, METRIC_KEYS
from aqtrack.tracking import store
from aqtrack.training.checkpoint import periodic_name


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowServer]:
    """A server, and MLflow set to give up on it quickly (no retries, short timeouts)."""
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server").start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setattr(store, "PROBE_INTERVAL_S", 0.0)
    monkeypatch.setattr(store, "PROBE_TIMEOUT_S", 0.5)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """aqtrack's warnings, whatever logging set-up an earlier test left behind."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("aqtrack")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


def history(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in METRIC_KEYS}


def final_weights(client: MlflowClient, run_id: str, tmp: Path) -> dict:
    path = client.download_artifacts(run_id, f"checkpoints/{LAST}", str(tmp / run_id))
    return torch.load(path, weights_only=True)["model"]


def assert_same_training(a: tuple[MlflowClient, str], b: tuple[MlflowClient, str], tmp: Path, epochs: int):
    (client_a, run_a), (client_b, run_b) = a, b
    points = history(client_a, run_a)
    assert all([s for s, _ in series] == list(range(1, epochs + 1)) for series in points.values()), points
    assert points == history(client_b, run_b)
    weights, reference = final_weights(client_a, run_a, tmp), final_weights(client_b, run_b, tmp)
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def test_a_server_outage_mid_training_is_ridden_out_and_the_run_caught_up(
    server, tiny, tmp_path, monkeypatch, warnings
):
    settings = {**tiny, "rounds": 2, "epochs_per_round": 4}
    straight = aqtrack.train(**settings)  # the reference, on the test's sqlite store
    reference = (MlflowClient(), straight.run_id)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)

    def outage(state) -> None:
        if state.epoch == 2:
            server.stop()  # epochs 3-5 are trained with no server
        if state.epoch == 5:
            server.start()

    result = aqtrack.train(callbacks=[outage], **{**settings, "output_dir": str(tmp_path / "remote")})

    client = MlflowClient(server.url)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[CHECKPOINT_EPOCH_TAG] == "8"
    assert_same_training((client, result.run_id), reference, tmp_path, epochs=8)
    names = {Path(f.path).name for f in client.list_artifacts(result.run_id, "checkpoints")}
    periodic = [periodic_name(r, 2) for r in (1, 2)] + [periodic_name(r, 4) for r in (1, 2)]
    assert {n + s for n in [*periodic, LAST] for s in ("", MANIFEST_SUFFIX)} <= names
    assert any(w.startswith("tracking server unreachable") for w in warnings), warnings
    assert any(w.startswith("tracking server back after") for w in warnings), warnings


def test_a_server_hung_past_the_patience_stops_training_and_resume_uses_the_local_checkpoint(
    server, tiny, tmp_path, monkeypatch
):
    settings = {**tiny, "rounds": 1, "epochs_per_round": 30, "tracking_patience": 2.0}
    straight = aqtrack.train(**settings)
    reference = (MlflowClient(), straight.run_id)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)

    def hang(state) -> None:
        if state.epoch == 3:
            server.pause()  # accepts connections, never answers

    with pytest.raises(TrackingLost) as lost:
        aqtrack.train(callbacks=[hang], **settings)
    server.resume()

    client = MlflowClient(server.url)
    (run,) = client.search_runs([client.get_experiment_by_name("action-quality").experiment_id])
    run_id, message = run.info.run_id, str(lost.value)
    assert f"tracking server {server.url} unreachable for" in message and "(patience 2 s)" in message
    assert f"`aqtrack train --resume {run_id}` continues from it once the server is back" in message
    local_epoch = int(message.split("the checkpoint of epoch ")[1].split()[0])
    assert 3 < local_epoch < 30  # trained on without the server, stopped before the end
    assert run.info.status == "RUNNING"  # nobody to tell; resume accepts it
    assert run.data.tags[CHECKPOINT_EPOCH_TAG] == "2"  # the callback froze it before epoch 3 was sent

    trained: list[int] = []
    resumed = aqtrack.train(resume=run_id, callbacks=[lambda state: trained.append(state.epoch)])

    assert trained[0] == local_epoch + 1  # from the local checkpoint, not the run's epoch 2
    assert resumed.epochs == 30 and client.get_run(run_id).info.status == "FINISHED"
    assert_same_training((client, run_id), reference, tmp_path, epochs=30)
