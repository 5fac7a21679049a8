"""The public API: what `import aqtrack` offers (re-exported by aqtrack/__init__.py). Each function imports
its job when called, so `import aqtrack` stays light."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from aqtrack.jobs.crossval import CvResult
    from aqtrack.jobs.pipeline import TrainResult
    from aqtrack.outputs.svm import SvmResult


def train(resume: str | None = None, **settings: Any) -> TrainResult:
    """See `aqtrack.jobs.pipeline.train` (settings, `fork=`, `fork_epoch=`, `callbacks=`); imported lazily so
    `import aqtrack` stays light."""
    from aqtrack.jobs.pipeline import train as _train

    return _train(resume=resume, **settings)


def cross_validate(resume: str | None = None, *, jobs: int = 1, **settings: Any) -> CvResult:
    """See `aqtrack.jobs.crossval.cross_validate`: `folds="5"` or `folds="loso"` plus any `train` setting, or
    `resume=PARENT_ID`; one parent run, one nested run per fold; `jobs` worker processes train folds."""
    from aqtrack.jobs.crossval import cross_validate as _cross_validate

    return _cross_validate(resume, jobs=jobs, **settings)


def rebuild_report(run_id: str, output_dir):
    from aqtrack.jobs.pipeline import rebuild_report as _rebuild

    return _rebuild(run_id, output_dir)


def runs_table(experiment: str | None = None, *, all_experiments: bool = False) -> pd.DataFrame:
    """See `aqtrack.tracking.browse.runs_table`: one row per run, as `aqtrack runs` shows them."""
    from aqtrack.tracking.browse import runs_table as _runs_table

    return _runs_table(experiment, all_experiments=all_experiments)


def show_run(run_id: str, tail: int = 10) -> str:
    """See `aqtrack.tracking.browse.show_run`: what `aqtrack show RUN_ID` prints."""
    from aqtrack.tracking.browse import show_run as _show_run

    return _show_run(run_id, tail)


def fit_svm(run_id: str, *, c: float | None = None, kernel: str | None = None) -> SvmResult:
    """See `aqtrack.jobs.refit.fit_svm`: refit a run's SVM stage from its best checkpoint (a nested run)."""
    from aqtrack.jobs.refit import fit_svm as _fit_svm

    return _fit_svm(run_id, c=c, kernel=kernel)


def plot_curves(source) -> Figure:
    """See `aqtrack.jobs.curves.plot_curves`: the training curves of a run id or an experiment_report.json."""
    from aqtrack.jobs.curves import plot_curves as _plot_curves

    return _plot_curves(source)


def predict(source: str, path, output=None) -> pd.DataFrame:
    """See `aqtrack.jobs.predictions.predict`: score the recordings in `path` (.csv, .parquet, .npz, .ts;
    labels optional) with a run id's best checkpoint or a `models:/NAME/VERSION` network. One row per
    recording: sample_id, its per-sample columns, label (if any), predicted, p_<class> per class. With
    `output`, also written there as CSV."""
    from aqtrack.jobs.predictions import predict as _predict

    return _predict(source, path, output)
