"""Names of the metrics, and the classification scores computed from confusion counts.

Per-epoch metrics are logged with step = global epoch (1-based, continuous across rounds). The scores
come from scikit-learn (accuracy, balanced accuracy, macro F1), given back the (true, predicted) pairs
that the confusion counts hold: counts can be summed over processes, predictions would have to be
gathered.
"""

import numpy as np


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted] as int64 [num_classes, num_classes]."""
    flat = np.bincount(num_classes * np.asarray(y_true) + np.asarray(y_pred), minlength=num_classes**2)
    return flat.reshape(num_classes, num_classes)


def scores(counts: np.ndarray) -> dict[str, float]:
    """{"acc", "balanced_acc", "f1_macro"} of confusion counts [K, K] (true x predicted), by sklearn.

    Balanced accuracy averages the recall of the classes that occur; macro F1 averages the F1 of every
    class that occurs as a label or a prediction, a class never predicted counting 0 (zero_division=0).
    """
    import warnings

    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    k = counts.shape[0]
    pairs = np.repeat(np.arange(k * k), np.asarray(counts, dtype=np.int64).reshape(-1))
    y_true, y_pred = pairs // k, pairs % k
    if len(y_true) == 0:
        return {"acc": float("nan"), "balanced_acc": float("nan"), "f1_macro": float("nan")}
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected, not a problem
        warnings.simplefilter("ignore", UserWarning)
        return {
            "acc": float(accuracy_score(y_true, y_pred)),
            "balanced_acc": float(balanced_accuracy_score(y_true, y_pred)),
            "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        }
