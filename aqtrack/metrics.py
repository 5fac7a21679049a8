"""Names of the per-epoch metrics, logged with step = global epoch (1-based, continuous across rounds)."""

import numpy as np

TRAIN_LOSS = "train_loss"
TRAIN_ACC = "train_acc"
VAL_LOSS = "val_loss"
VAL_ACC = "val_acc"
LR = "lr"  # read from the optimizer during the epoch, never computed from the schedule's formula
GRAD_NORM = "grad_norm"  # mean over the epoch's steps of the pre-clip norm clip_grad_norm_ returns
GRAD_NORM_MAX = "grad_norm_max"
METRIC_KEYS = (TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC, LR, GRAD_NORM, GRAD_NORM_MAX)

# Thresholds on the epoch's mean pre-clip `grad_norm`, warned about on the console, kept as run tags
# and drawn as bands on the training curves.
GRAD_EXPLOSION = 10.0
GRAD_VANISHING = 0.01

# The SVM stage, logged once at step = the final epoch.
SVM_VAL_ACC = "svm_val_acc"
SVM_VAL_F1 = "svm_val_f1"  # macro F1


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted] as int64 [num_classes, num_classes]."""
    flat = np.bincount(num_classes * np.asarray(y_true) + np.asarray(y_pred), minlength=num_classes**2)
    return flat.reshape(num_classes, num_classes)
