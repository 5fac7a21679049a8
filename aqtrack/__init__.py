"""aqtrack: train an action-quality classifier in PyTorch, tracked in MLflow, resumable by run id.

import aqtrack
result = aqtrack.train(rounds=1, epochs_per_round=20)
aqtrack.train(resume=result.run_id, rounds=2)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aqtrack.pipeline import TrainResult

__all__ = ["rebuild_report", "train"]


def train(resume: str | None = None, **settings: Any) -> TrainResult:
    """See `aqtrack.pipeline.train`; imported lazily so `import aqtrack` stays light."""
    from aqtrack.pipeline import train as _train

    return _train(resume=resume, **settings)


def rebuild_report(run_id: str, output_dir):
    from aqtrack.pipeline import rebuild_report as _rebuild

    return _rebuild(run_id, output_dir)
