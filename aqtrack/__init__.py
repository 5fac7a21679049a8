"""aqtrack: train an action-quality classifier in PyTorch, tracked in MLflow, resumable by run id.

import aqtrack
result = aqtrack.train(rounds=1, epochs_per_round=20)
aqtrack.train(resume=result.run_id, rounds=2)
aqtrack.train(fork=result.run_id, fork_epoch=10, lr=5e-4)  # a new run from epoch 10, lower lr
table = aqtrack.predict(result.run_id, "new_recordings.csv")  # a DataFrame: predicted, p_<class>...
cv = aqtrack.cross_validate(folds="5", rounds=1, epochs_per_round=20)  # one nested run per fold
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from aqtrack.crossval import CvResult
    from aqtrack.pipeline import TrainResult
    from aqtrack.svm import SvmResult

__all__ = [
    "cross_validate",
    "fit_svm",
    "plot_curves",
    "predict",
    "rebuild_report",
    "runs_table",
    "show_run",
    "train",
]


def train(resume: str | None = None, **settings: Any) -> TrainResult:
    """See `aqtrack.pipeline.train` (settings, `fork=`, `fork_epoch=`, `callbacks=`); imported lazily so
    `import aqtrack` stays light."""
    from aqtrack.pipeline import train as _train

    return _train(resume=resume, **settings)


def cross_validate(resume: str | None = None, *, jobs: int = 1, **settings: Any) -> CvResult:
    """See `aqtrack.crossval.cross_validate`: `folds="5"` or `folds="loso"` plus any `train` setting, or
    `resume=PARENT_ID`; one parent run, one nested run per fold; `jobs` worker processes train folds."""
    from aqtrack.crossval import cross_validate as _cross_validate

    return _cross_validate(resume, jobs=jobs, **settings)


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


def fit_svm(run_id: str, *, c: float | None = None, kernel: str | None = None) -> SvmResult:
    """See `aqtrack.finish.fit_svm`: refit a run's SVM stage from its best checkpoint, as a nested run."""
    from aqtrack.finish import fit_svm as _fit_svm

    return _fit_svm(run_id, c=c, kernel=kernel)


def plot_curves(source) -> Figure:
    """See `aqtrack.finish.plot_curves`: the training curves of a run id or an experiment_report.json."""
    from aqtrack.finish import plot_curves as _plot_curves

    return _plot_curves(source)


def predict(source: str, path, output=None) -> pd.DataFrame:
    """See `aqtrack.predictions.predict`: score the recordings in `path` (.csv, .parquet, .npz, .ts;
    labels optional) with a run id's best checkpoint or a `models:/NAME/VERSION` network. One row per
    recording: sample_id, its per-sample columns, label (if any), predicted, p_<class> per class. With
    `output`, also written there as CSV."""
    from aqtrack.predictions import predict as _predict

    return _predict(source, path, output)
