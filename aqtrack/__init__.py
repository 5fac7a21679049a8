"""aqtrack: train an action-quality classifier in PyTorch, tracked in MLflow, resumable by run id.

import aqtrack
result = aqtrack.train(rounds=1, epochs_per_round=20)
aqtrack.train(resume=result.run_id, rounds=2)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from aqtrack.pipeline import TrainResult

__all__ = ["rebuild_report", "runs_table", "show_run", "train"]


def train(resume: str | None = None, **settings: Any) -> TrainResult:
    """See `aqtrack.pipeline.train`; imported lazily so `import aqtrack` stays light."""
    from aqtrack.pipeline import train as _train

    return _train(resume=resume, **settings)


def rebuild_report(run_id: str, output_dir):
    from aqtrack.pipeline import rebuild_report as _rebuild

    return _rebuild(run_id, output_dir)


def runs_table(experiment: str | None = None, *, all_experiments: bool = False) -> pd.DataFrame:
    """See `aqtrack.browse.runs_table`: one row per run, as `aqtrack runs` shows them."""
    from aqtrack.browse import runs_table as _runs_table

    return _runs_table(experiment, all_experiments=all_experiments)


def show_run(run_id: str, tail: int = 10) -> str:
    """See `aqtrack.browse.show_run`: what `aqtrack show RUN_ID` prints."""
    from aqtrack.browse import show_run as _show_run

    return _show_run(run_id, tail)
