"""Every test gets its own MLflow store (sqlite in tmp_path) and runs in tmp_path, never in the repo."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite database, migrated once: creating one costs seconds, copying it nothing."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    cwd = os.getcwd()
    os.chdir(path.parent)  # the Default experiment's artifact root is resolved against the cwd
    try:
        MlflowClient(f"sqlite:///{path}").search_experiments()
    finally:
        os.chdir(cwd)
    return path


@pytest.fixture(autouse=True)
def mlflow_store(empty_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite tracking store in tmp_path; artifacts land in tmp_path/mlruns (the cwd)."""
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    return uri


@pytest.fixture(autouse=True)
def restore_aqtrack_logger() -> Iterator[None]:
    """`cli.main` points the aqtrack logger at stderr, away from pytest's caplog; undo that afterwards."""
    logger = logging.getLogger("aqtrack")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
def tiny(tmp_path: Path) -> dict:
    """Settings for a run of a few seconds: 2 rounds x 2 epochs on 64 + 32 (+ 32 test) synthetic
    sequences."""
    return {
        "n_train": 64,
        "n_val": 32,
        "n_test": 32,
        "hidden": 8,
        "rounds": 2,
        "epochs_per_round": 2,
        "batch_size": 16,
        "checkpoint_interval": 2,
        # Every epoch published: tests count points, uploads and crash points epoch by epoch
        # (tests/test_publishing.py tests the budget itself).
        "publish_interval": 0,
        "output_dir": str(tmp_path / "outputs"),
    }
