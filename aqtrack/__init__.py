"""aqtrack: train an action-quality classifier in PyTorch, tracked in MLflow, resumable by run id.

import aqtrack
result = aqtrack.train(rounds=1, epochs_per_round=20)
aqtrack.train(resume=result.run_id, rounds=2)
aqtrack.train(fork=result.run_id, fork_epoch=10, lr=5e-4)  # a new run from epoch 10, lower lr
table = aqtrack.predict(result.run_id, "new_recordings.csv")  # a DataFrame: predicted, p_<class>...
cv = aqtrack.cross_validate(folds="5", rounds=1, epochs_per_round=20)  # one nested run per fold
"""

from aqtrack.api import (
    cross_validate,
    fit_svm,
    plot_curves,
    predict,
    rebuild_report,
    runs_table,
    show_run,
    train,
)

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
