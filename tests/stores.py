"""An MLflow store of its own for a module-scoped fixture (the autouse `mlflow_store` is per test)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

INHERITED = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


@contextlib.contextmanager
def own_store(root: Path, empty_store: Path) -> Iterator[str]:
    """Within the block: a copy of the (migrated) empty store in `root`, MLFLOW_TRACKING_URI pointing at
    it, no run or experiment inherited from the environment, `root` as the cwd (artifacts land in
    root/mlruns). Yields the store's URI; all is undone on leaving."""
    shutil.copyfile(empty_store, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for name in INHERITED:
            mp.delenv(name, raising=False)
        mp.chdir(root)
        yield uri
