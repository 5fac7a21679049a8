"""Names of the metrics, and the classification scores computed from confusion counts.

Per-epoch metrics are logged with step = global epoch (1-based, continuous across rounds). The scores
come from scikit-learn (accuracy, balanced accuracy, macro F1), given back the (true, predicted) pairs
that the confusion counts hold: counts can be summed over processes, predictions would have to be
gathered.
"""

import numpy as np

TRAIN_LOSS = "train_loss"
TRAIN_ACC = "train_acc"
VAL_LOSS = "val_loss"
VAL_ACC = "val_acc"
VAL_BALANCED_ACC = "val_balanced_acc"  # mean recall over the classes (sklearn balanced_accuracy_score)
VAL_F1_MACRO = "val_f1_macro"  # unweighted mean of the per-class F1 (sklearn f1_score, average="macro")
LR = "lr"  # read from the optimizer during the epoch, never computed from the schedule's formula
GRAD_NORM = "grad_norm"  # mean over the epoch's steps of the pre-clip norm clip_grad_norm_ returns
GRAD_NORM_MAX = "grad_norm_max"
METRIC_KEYS = (
    TRAIN_LOSS,
    TRAIN_ACC,
    VAL_LOSS,
    VAL_ACC,
    VAL_BALANCED_ACC,
    VAL_F1_MACRO,
    LR,
    GRAD_NORM,
    GRAD_NORM_MAX,
)
# What `--select-by` may choose the best epoch by (on the validation split, never the test split).
SELECTABLE = (VAL_ACC, VAL_BALANCED_ACC, VAL_F1_MACRO)

# The held-out test split, evaluated once, from the best checkpoint, at step = the final epoch.
TEST_ACC = "test_acc"
TEST_BALANCED_ACC = "test_balanced_acc"
TEST_F1_MACRO = "test_f1_macro"
TEST_KEYS = (TEST_ACC, TEST_BALANCED_ACC, TEST_F1_MACRO)

# A cross-validation's parent run, at step = the number of folds aggregated (all K once all finished):
# over the finished folds, the mean and the sample standard deviation (ddof=1) of each fold's test score,
# and the scores of all their out-of-fold predictions pooled.
CV_FOLDS_FINISHED = "cv_folds_finished"
CV_MEAN = {key: f"cv_{key}_mean" for key in TEST_KEYS}  # cv_test_acc_mean, ...
CV_STD = {key: f"cv_{key}_std" for key in TEST_KEYS}  # cv_test_acc_std, ... (from 2 folds on)
CV_OOF_ACC = "cv_oof_acc"
CV_OOF_BALANCED_ACC = "cv_oof_balanced_acc"
CV_OOF_F1_MACRO = "cv_oof_f1_macro"

# The SVM stage, logged once at step = the final epoch.
SVM_VAL_ACC = "svm_val_acc"
SVM_VAL_F1 = "svm_val_f1"  # macro F1
SVM_TEST_ACC = "svm_test_acc"
SVM_TEST_F1 = "svm_test_f1"  # macro F1


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
