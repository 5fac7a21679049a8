"""A cross-validation's aggregate: what its FINISHED fold runs measured, pooled into its parent run.

Read from each fold run, never recomputed: its `test_acc`, `test_balanced_acc` and `test_f1_macro`, its
best epoch (the first best of its `select_by`), and its test split's predictions (`test/predictions.csv`,
made from its best checkpoint by its finishing stage). Logged to the parent at step = the number of
folds aggregated: the mean and the sample standard deviation (ddof=1) of each test score over the
folds, and the scores of their predictions pooled; the per-fold table, the out-of-fold predictions as
CSV, their confusion matrix and the folds' figure. Made again by a resume, nothing is logged twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aqtrack import names
from aqtrack.data.dataset import FoldPlan
from aqtrack.errors import DataError, ResumeError
from aqtrack.names import (
    CV_FOLDS_FINISHED,
    CV_MEAN,
    CV_OOF_ACC,
    CV_OOF_BALANCED_ACC,
    CV_OOF_F1_MACRO,
    CV_STD,
    TEST_KEYS,
    VAL_ACC,
)
from aqtrack.tracking import exports, store
from aqtrack.training.scores import confusion_counts, scores

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("sample_id", "subject", "fold", "label", "predicted")  # then p_<class> per class


@dataclass(frozen=True)
class FoldResult:
    """One finished fold, as its run measured it on its test split (its fold)."""

    fold: int
    run_id: str
    subjects: tuple[str, ...]  # held out in this fold (empty without subjects)
    n: int  # test samples
    test_acc: float
    test_balanced_acc: float
    test_f1_macro: float
    best_epoch: int

    def row(self) -> dict[str, Any]:
        """A row of the per-fold table."""
        return {
            "fold": self.fold,
            "run_id": self.run_id,
            "subjects": ",".join(self.subjects),
            "n_subjects": len(self.subjects),
            "n": self.n,
            TEST_KEYS[0]: self.test_acc,
            TEST_KEYS[1]: self.test_balanced_acc,
            TEST_KEYS[2]: self.test_f1_macro,
            "best_epoch": self.best_epoch,
        }


@dataclass(frozen=True)
class Aggregate:
    folds: list[FoldResult]  # in fold order
    scores: dict[str, float]  # cv_test_acc_mean, ..., cv_oof_acc, ... ({} without a finished fold)
    predictions: pd.DataFrame  # out of fold, in the data's order: PREDICTION_COLUMNS, p_<class>...


def aggregate(client, parent, plan: FoldPlan, tmp: Path) -> Aggregate:
    """Aggregate the parent's FINISHED folds, and only those, into it."""
    import pandas as pd

    folds, parts = [], []
    for fold, run in sorted(store.cv_folds(client, parent).items()):
        if run.info.status == "FINISHED":
            result, predictions = _fold_result(client, run, fold, plan, tmp)
            folds.append(result)
            parts.append(predictions)
    predictions = pd.concat(parts).sort_index() if parts else _empty_predictions(plan)
    done = Aggregate(folds, _scores(folds, predictions, plan.pool.class_names), predictions)
    if folds:
        log_scores(client, parent.info.run_id, done, tmp)
        _log_predictions(client, parent.info.run_id, done, plan, tmp)
    return done


def _fold_result(client, run, fold: int, plan: FoldPlan, tmp: Path) -> tuple[FoldResult, pd.DataFrame]:
    """What the fold's run measured, and its predictions indexed by their samples' place in the data."""
    import pandas as pd

    run_id = run.info.run_id
    path = store.download_if_present(client, run_id, names.TEST_PREDICTIONS_ARTIFACT, tmp / run_id)
    if path is None:
        raise ResumeError(
            f"fold {fold}: its run {run_id} is FINISHED without {names.TEST_PREDICTIONS_ARTIFACT}; "
            "was it trained by an older aqtrack?"
        )
    table = pd.read_csv(
        path, dtype={"sample_id": str, "subject": str}, keep_default_na=False, float_precision="round_trip"
    )
    index = plan.tests[fold - 1]
    test = plan.pool.samples.select(index)
    if table["sample_id"].tolist() != [str(s) for s in test.sample_ids]:
        raise DataError(
            f"fold {fold}: its run {run_id} was tested on other samples than fold {fold} of "
            f"{plan.pool.source} holds now: the data changed since the cross-validation started"
        )
    table.insert(2, "fold", fold)
    table.index = index
    metrics, select_by = run.data.metrics, run.data.params.get("select_by", VAL_ACC)
    history = store.fetch_history(client, run_id, (select_by,))[select_by]
    best = max(history.values(), default=float("nan"))
    result = FoldResult(
        fold=fold,
        run_id=run_id,
        subjects=tuple(sorted({str(s) for s in test.subjects})) if test.subjects is not None else (),
        n=len(test),
        test_acc=metrics.get(TEST_KEYS[0], float("nan")),
        test_balanced_acc=metrics.get(TEST_KEYS[1], float("nan")),
        test_f1_macro=metrics.get(TEST_KEYS[2], float("nan")),
        best_epoch=min((step for step, value in history.items() if value == best), default=0),
    )
    return result, table


def _empty_predictions(plan: FoldPlan) -> pd.DataFrame:
    import pandas as pd

    from aqtrack.jobs.predictions import PROBABILITY_PREFIX

    probabilities = [PROBABILITY_PREFIX + name for name in plan.pool.class_names]
    return pd.DataFrame(columns=[*PREDICTION_COLUMNS, *probabilities])


def _scores(
    folds: list[FoldResult], predictions: pd.DataFrame, class_names: tuple[str, ...]
) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; from 2 folds on) of each test score over the folds,
    and the scores of the pooled out-of-fold predictions."""
    if not folds:
        return {}
    out: dict[str, float] = {CV_FOLDS_FINISHED: float(len(folds))}
    for key in TEST_KEYS:
        values = np.array([getattr(f, key) for f in folds], dtype=np.float64)
        out[CV_MEAN[key]] = float(values.mean())
        if len(values) > 1:
            out[CV_STD[key]] = float(values.std(ddof=1))
    pooled = scores(_confusion(predictions, class_names))
    out |= {
        CV_OOF_ACC: pooled["acc"],
        CV_OOF_BALANCED_ACC: pooled["balanced_acc"],
        CV_OOF_F1_MACRO: pooled["f1_macro"],
    }
    return out


def _confusion(predictions: pd.DataFrame, class_names: tuple[str, ...]) -> np.ndarray:
    index = {name: k for k, name in enumerate(class_names)}
    y, predicted = (predictions[c].map(index).to_numpy() for c in ("label", "predicted"))
    return confusion_counts(y, predicted, len(class_names))


def log_scores(client, run_id: str, done: Aggregate, tmp: Path) -> None:
    """The aggregate metrics at step = the number of folds aggregated (each once), and the per-fold
    table: MLflow appends to a logged table, so only the rows of folds it lacks are logged."""
    step = len(done.folds)
    have = {k for k in done.scores if step in store.metric_steps(client, run_id, k)}
    store.log_points(client, run_id, {k: v for k, v in done.scores.items() if k not in have}, step, {})
    logged = exports.read_table(client, run_id, names.CV_FOLDS_TABLE, tmp / "table") or {"fold": []}
    rows = [f.row() for f in done.folds if f.fold not in set(logged["fold"])]
    if rows:
        exports.log_table(client, run_id, {k: [r[k] for r in rows] for k in rows[0]}, names.CV_FOLDS_TABLE)


def _log_predictions(client, run_id: str, done: Aggregate, plan: FoldPlan, tmp: Path) -> None:
    """The out-of-fold predictions (CSV, in the data's order), their confusion matrix and the folds'
    figure; each replaces the one an earlier aggregate logged."""
    from aqtrack.outputs.plots import confusion_matrix_figure, cv_folds_figure, save_png

    path = tmp / Path(names.CV_PREDICTIONS).name
    done.predictions.to_csv(path, index=False)
    client.log_artifact(run_id, str(path), names.CV_DIR)
    class_names = plan.pool.class_names
    title = f"out-of-fold predictions of {len(done.folds)} of {plan.k} folds (run {run_id[:8]})"
    figure = confusion_matrix_figure(_confusion(done.predictions, class_names), class_names, title=title)
    exports.log_png(client, run_id, save_png(figure, tmp / names.CV_CONFUSION), names.CV_CONFUSION)
    by_key = {key: [getattr(f, key) for f in done.folds] for key in TEST_KEYS}
    title = f"test scores by fold (run {run_id[:8]})"
    figure = cv_folds_figure([f.fold for f in done.folds], by_key, title=title)
    exports.log_png(client, run_id, save_png(figure, tmp / names.CV_FOLDS_FIGURE), names.CV_FOLDS_FIGURE)
