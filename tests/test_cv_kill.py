"""Kill a cross-validation anywhere, resume it as a whole: `aqtrack cv` processes SIGKILLed inside a fold,
between folds and while aggregating (scripts/kill_at.py), then `aqtrack cv --resume PARENT` until done, end
bit-equal (CPU) to an uninterrupted cross-validation: every fold run's metrics and final weights, the
parent's aggregate metrics, per-fold table and out-of-fold predictions."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from crashes import run_aqtrack
from mlflow import MlflowClient
from mlflow.entities import ViewType
from stores import own_store
from test_crossval import SETTINGS, assert_same, outcome

from aqtrack import names

FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items() if k != "svm"] + ["--no-svm", "-q"]


def parent_id() -> str:
    client = MlflowClient()
    experiment = client.get_experiment_by_name("action-quality").experiment_id
    (parent,) = [r for r in client.search_runs([experiment]) if names.TAG_CV in r.data.tags]
    return parent.info.run_id


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> dict:
    """An uninterrupted cross-validation, in a process of its own like the killed ones."""
    root = tmp_path_factory.mktemp("reference")
    with own_store(root, empty_store):
        done = run_aqtrack(root, "cv", *FLAGS, "--output-dir", str(root / "out"), timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return outcome(parent_id(), root / "read")


@pytest.mark.parametrize(
    "kills",
    [
        # Inside fold 2 (its first last.pt upload: fold 1 uploaded 2), then, resuming, between folds 2 and 3.
        ["uploaded-last:3", "fold-done:1"],
        # Mid-batch in fold 1's first epoch: its run holds no checkpoint, so the fold starts again.
        ["batch:2"],
        # While aggregating: metrics and table logged, predictions and figures not.
        ["cv-aggregated:1"],
    ],
    ids=["inside-a-fold-then-between-folds", "before-any-checkpoint", "while-aggregating"],
)
def test_killed_cross_validation_resumed_ends_as_if_never_killed(tmp_path, reference, kills):
    out = ["--output-dir", str(tmp_path / "out")]
    done = run_aqtrack(tmp_path, "cv", *FLAGS, *out, kill_at=kills[0], timeout=600)
    assert done.returncode == -signal.SIGKILL, f"not killed at {kills[0]}: {done.stderr[-3000:]}"
    parent = parent_id()
    assert MlflowClient().get_run(parent).info.status == "RUNNING"
    for i, kill in enumerate([*kills[1:], None], 1):
        done = run_aqtrack(tmp_path, "cv", "--resume", parent, "-q", kill_at=kill, timeout=600)
        expected = -signal.SIGKILL if kill else 0
        assert done.returncode == expected, f"resume {i} ({kill or 'to the end'}): {done.stderr[-3000:]}"

    assert_same(outcome(parent, tmp_path / "read"), reference)
    deleted = MlflowClient().search_runs(
        [MlflowClient().get_run(parent).info.experiment_id], run_view_type=ViewType.DELETED_ONLY
    )
    # A fold run with nothing to continue from is deleted, and its fold trained in a new run.
    assert len(deleted) == (1 if kills == ["batch:2"] else 0)
