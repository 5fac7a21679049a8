"""The second stage: an SVM on the network's sequence embeddings. The only module that imports sklearn.

Scaling is part of the fitted pipeline, so the logged model takes raw `features()` output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC


@dataclass
class SvmResult:
    """A fitted scaling + SVC pipeline and how it scores on the validation split."""

    pipeline: Any  # sklearn Pipeline(StandardScaler, SVC)
    val_acc: float
    val_f1: float  # macro F1 over the classes
    c: float
    kernel: str
    test_acc: float | None = None  # on the held-out test split, when the data has one
    test_f1: float | None = None  # macro F1
    run_id: str = ""  # the run it is logged to
    refit_of: str = ""  # for an `aqtrack svm` refit: the training run whose network it uses


def fit_svm(
    train_features: np.ndarray,
    y_train: np.ndarray,
    val_features: np.ndarray,
    y_val: np.ndarray,
    *,
    c: float,
    kernel: str,
    test: tuple[np.ndarray, np.ndarray] | None = None,
) -> SvmResult:
    """Fit on the train split's features [N, D], score on the validation split's (and on `test`'s:
    (features, labels) of the held-out split)."""
    pipeline = Pipeline([("scale", StandardScaler()), ("svc", SVC(C=c, kernel=kernel))])
    pipeline.fit(train_features, y_train)
    val_acc, val_f1 = _scores(pipeline, val_features, y_val)
    test_acc, test_f1 = _scores(pipeline, *test) if test is not None else (None, None)
    return SvmResult(pipeline, val_acc, val_f1, float(c), kernel, test_acc, test_f1)


def _scores(pipeline: Any, features: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    predicted = pipeline.predict(features)
    f1 = f1_score(y, predicted, average="macro", zero_division=0)
    return float(accuracy_score(y, predicted)), float(f1)
