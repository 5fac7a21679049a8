"""aqtrack.tracking.store.MlflowTracker while the server is away: what waits, in which order it is sent, and
when it gives up. A small fake client stands in for the server here; tests/test_server_outage.py does
the same against a real `mlflow server`."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

from aqtrack.errors import TrackingLost
from aqtrack.tracking import store


class FakeClient:
    """Records what reaches the 'server'; while `down`, every call fails like a refused connection."""

    tracking_uri = "sqlite:///fake.db"

    def __init__(self) -> None:
        self.down, self.sent, self.metrics = False, [], {}

    def _call(self, what) -> None:
        if self.down:
            raise MlflowException("API request to http://x failed with exception ConnectionError")
        self.sent.append(what)

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self._call(("batch", [(m.key, m.step) for m in metrics], {t.key: t.value for t in tags}))
        for m in metrics:
            self.metrics.setdefault(m.key, []).append(SimpleNamespace(step=m.step, value=m.value))

    def log_artifact(self, run_id, path, artifact_path=None):
        self._call(("file", Path(path).name))

    def get_metric_history(self, run_id, key):
        self._call(("history", key))
        return self.metrics.get(key, [])


@pytest.fixture
def tracker(monkeypatch) -> tuple[store.MlflowTracker, FakeClient]:
    monkeypatch.setattr(store, "PROBE_INTERVAL_S", 0.0)
    client = FakeClient()
    return store.MlflowTracker(client, "r" * 32, patience=60), client


def publish(tracker: store.MlflowTracker, epoch: int) -> None:
    tracker.log_metrics({"val_acc": 0.5, "lr": 0.1}, step=epoch)
    tracker.log_artifact(Path("last.pt"), "checkpoints")
    tracker.log_artifact(Path("last.pt.manifest.json"), "checkpoints")
    tracker.set_tags({"aqtrack.checkpoint_epoch": str(epoch)})
    tracker.flush()


def test_what_waited_is_sent_in_order_once_the_server_is_back(tracker):
    tracker, client = tracker
    publish(tracker, 1)
    client.down = True
    publish(tracker, 2)
    publish(tracker, 3)
    assert tracker.offline
    client.down, client.sent = False, []

    tracker.log_metrics({"val_acc": 0.7, "lr": 0.1}, step=4)

    assert [what[0] for what in client.sent] == []  # queued until the epoch's flush
    tracker.flush()

    kinds = [what[0] for what in client.sent]
    assert kinds == ["file", "file", "history", "history", "batch"]  # files first, each once
    assert [what[1] for what in client.sent[:2]] == ["last.pt", "last.pt.manifest.json"]
    assert sorted(client.sent[4][1]) == [(k, s) for k in ("lr", "val_acc") for s in (2, 3, 4)]
    assert client.sent[4][2]["aqtrack.checkpoint_epoch"] == "3"  # the tag, with the metrics, last
    assert not tracker.offline


def test_points_the_server_took_before_the_failure_are_not_sent_twice(tracker):
    tracker, client = tracker
    client.metrics["val_acc"] = [SimpleNamespace(step=2, value=0.5)]  # landed, but the answer was lost
    client.down = True
    tracker.log_metrics({"val_acc": 0.5}, step=2)
    tracker.flush()
    client.down = False

    tracker.log_metrics({"val_acc": 0.6}, step=3)
    tracker.flush()

    assert [s for s in client.metrics["val_acc"] if s.step == 2] == [client.metrics["val_acc"][0]]
    assert sorted(m.step for m in client.metrics["val_acc"]) == [2, 3]


def test_past_the_patience_it_gives_up_with_tracking_lost(tracker, monkeypatch):
    tracker, client = tracker
    tracker.patience = 0.0
    client.down = True
    with pytest.raises(
        TrackingLost, match=r"tracking server sqlite:///fake.db unreachable for 0 s \(patience 0 s\)"
    ):
        publish(tracker, 1)


def test_a_refused_request_is_not_waited_out_it_is_raised(tracker):
    tracker, client = tracker

    def invalid(*args, **kwargs):
        raise MlflowException("bad metric name", error_code=INVALID_PARAMETER_VALUE)

    client.log_batch = invalid
    tracker.log_metrics({"val_acc": 0.5}, step=1)
    with pytest.raises(MlflowException, match="bad metric name"):
        tracker.flush()
    assert not tracker.offline


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (MlflowException("API request failed with exception ConnectionError"), True),
        (MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE), True),
        (MlflowException("bad", error_code=INVALID_PARAMETER_VALUE), False),
        (requests.ConnectionError("refused"), True),
        (requests.HTTPError("500", response=SimpleNamespace(status_code=503)), True),
        (requests.HTTPError("404", response=SimpleNamespace(status_code=404)), False),
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (FileNotFoundError("last.pt"), False),
        (ValueError("a bug"), False),
    ],
)
def test_only_failures_that_can_pass_count_as_the_server_being_away(error, transient):
    assert store.is_transient(error) is transient


def test_within_the_publishing_budget_epochs_wait_and_go_out_together_each_point_at_its_step(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(store.time, "monotonic", lambda: clock[0])
    client = FakeClient()
    tracker = store.MlflowTracker(client, "r" * 32, patience=60, interval=10.0)

    publish(tracker, 1)  # the first epoch goes out at once
    for epoch in (2, 3, 4):
        clock[0] += 3.0  # 3 s epochs: 9 s since the publish
        publish(tracker, epoch)
    assert [what[0] for what in client.sent] == ["file", "file", "batch"]
    clock[0] += 3.0  # 12 s: epochs 2-5 in one publish, last.pt (and its manifest) once, the newest tag
    publish(tracker, 5)

    batches = [what for what in client.sent if what[0] == "batch"]
    assert [what[0] for what in client.sent] == ["file", "file", "batch", "file", "file", "batch"]
    assert sorted(batches[1][1]) == sorted((k, e) for e in (2, 3, 4, 5) for k in ("val_acc", "lr"))
    assert batches[1][2]["aqtrack.checkpoint_epoch"] == "5"
    clock[0] += 1.0
    publish(tracker, 6)  # 1 s after a publish: waits ...
    assert len([what for what in client.sent if what[0] == "batch"]) == 2
    tracker.flush(force=True)  # ... unless forced (a stop, the end of training)
    assert client.sent[-1][:2] == ("batch", [("val_acc", 6), ("lr", 6)])
    assert client.sent[-1][2]["aqtrack.checkpoint_epoch"] == "6"


def test_the_legacy_report_is_written_when_the_run_is_published_and_holds_every_epoch_then(
    monkeypatch, tmp_path
):
    from aqtrack.names import REPORT_FILE
    from aqtrack.outputs.report import report_writer
    from aqtrack.training.checkpoint import TrainState

    clock = [1000.0]
    monkeypatch.setattr(store.time, "monotonic", lambda: clock[0])
    client = FakeClient()
    tracker = store.MlflowTracker(client, "r" * 32, patience=60, interval=10.0)
    hook = report_writer(tracker, tmp_path, {"samples": 3}, "r" * 32)
    state = TrainState(config={"rounds": 1, "epochs_per_round": 6}, model_spec={})
    path = tmp_path / REPORT_FILE

    def epoch(n: int) -> None:  # what loop.fit does at the end of an epoch
        clock[0] += 3.0
        state.epoch = n
        state.history.append({"train_loss": 1.0 / n}, [0.5])
        tracker.log_metrics({"train_loss": 1.0 / n}, step=n)
        hook(state)
        tracker.flush()

    def written() -> int:
        return json.loads(path.read_text())["current_epoch"]

    epoch(1)  # the first publish: the report of epoch 1 goes with it
    assert written() == 1 and [w[1] for w in client.sent if w[0] == "file"] == [REPORT_FILE]
    for n in (2, 3, 4):
        epoch(n)  # held back by the budget: neither written nor sent
        assert written() == 1
    epoch(5)  # 12 s after the first publish: epochs 2-5, with the report of epoch 5
    assert written() == 5 and json.loads(path.read_text())["control_losses"] == [1.0, 0.5, 1 / 3, 0.25, 0.2]
    assert [w[1] for w in client.sent if w[0] == "file"] == [REPORT_FILE, REPORT_FILE]
    epoch(6)
    assert written() == 5
    tracker.drain()  # the end of training (or a stop: publish_held) sends it current
    assert written() == 6 and [w[1] for w in client.sent if w[0] == "file"].count(REPORT_FILE) == 3
    tracker.drain()  # nothing new: not written again
    assert [w[1] for w in client.sent if w[0] == "file"].count(REPORT_FILE) == 3
    client.down, clock[0] = True, clock[0] + 10.0  # the next publish finds the server away ...
    epoch(7)
    assert tracker.offline and written() == 7
    epoch(8)  # ... and while it is away, the report is still kept current here, waiting with the rest
    assert tracker.offline and written() == 8
