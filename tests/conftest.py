"""Every test gets its own MLflow store (sqlite in tmp_path) and runs in tmp_path, never in the repo."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from stores import INHERITED

REPO = Path(__file__).resolve().parents[1]

# One torch thread per process, set before torch is imported (and inherited by every aqtrack process a
# test starts). The suite runs a worker per core and many tests start training processes besides, so
# torch's default of a thread per core oversubscribes the cores, and OpenMP threads waiting for each
# other stall whenever another process runs: on this 2-core machine, two tiny trainings took 1.7x the
# wall time and 1.6x the CPU time with 2 threads. Networks of hidden size 8 gain nothing from a second
# thread. Tests comparing a subprocess's training with this process's bit for bit still compare like
# with like; the cross-validation tests set their thread counts themselves.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Modules whose tests share a module-scoped fixture (a reference run, runs trained once, a notebook run
# once, a server): each goes whole to one worker, so that fixture is made once, not once per worker.
WHOLE_MODULES = frozenset(
    {
        "test_browse.py",
        "test_crossval.py",
        "test_cv_kill.py",
        "test_kill_anywhere.py",
        "test_notebook.py",
        "test_predict.py",
        "test_remote_suite.py",
        "test_ui.py",
    }
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """xdist's scheduling, except that each of WHOLE_MODULES is one unit of work. Its default (`load`)
    hands each worker runs of consecutive tests, so a module could be split and its reference run
    trained twice; `--dist loadgroup` with `xdist_group` marks would keep a module together, but it
    stopped grouping with pytest 9.2 (pytest-xdist#1386). Here the whole modules are handed out first,
    largest first, then every other test one by one as workers free up. An explicit `--dist` other
    than load is left as it is."""
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WholeModules(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.partition("::")[0]
            return path if Path(path).name in WHOLE_MODULES else nodeid

    return WholeModules(config, log)


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
    for name in INHERITED:  # no run or experiment inherited from the environment
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return uri


@pytest.fixture(autouse=True)
def restore_aqtrack_logger() -> Iterator[None]:
    """`cli.main` points the aqtrack logger at stderr, away from pytest's caplog; undo that afterwards."""
    logger = logging.getLogger("aqtrack")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture(scope="session")
def tiny_settings() -> dict:
    """Settings for a run of a few seconds: 2 rounds x 2 epochs on 64 + 32 (+ 32 test) synthetic
    sequences. The finishing stage's slow parts are off: most tests check epochs, metrics and
    checkpoints, and exporting the network (torch.export) and fitting and exporting an SVM at the end of
    each run were a large part of the suite's time. A test of those (the `model` and `svm` models, svm_*
    metrics, what a refit or the run's description says of them) takes `tiny_full`, or turns the one it
    tests back on. A module-scoped fixture takes these and an output dir of its own; a test takes `tiny`."""
    return {
        "n_train": 64,
        "n_val": 32,
        "n_test": 32,
        "hidden": 8,
        "rounds": 2,
        "epochs_per_round": 2,
        "batch_size": 16,
        "checkpoint_interval": 2,
        "svm": False,
        "log_model": False,
        # Every epoch published: tests count points, uploads and crash points epoch by epoch
        # (tests/test_tracking.py tests the budget itself).
        "publish_interval": 0,
    }


@pytest.fixture
def tiny(tiny_settings: dict, tmp_path: Path) -> dict:
    """`tiny_settings`, writing to the test's tmp_path."""
    return {**tiny_settings, "output_dir": str(tmp_path / "outputs")}


@pytest.fixture
def tiny_full(tiny: dict) -> dict:
    """`tiny` with the whole finishing stage, as a run is by default: the network logged as the `model`
    model and the SVM fitted and logged as `svm`."""
    return {**tiny, "svm": True, "log_model": True}
