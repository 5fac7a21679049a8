"""Names of the per-epoch metrics, logged with step = global epoch (1-based, continuous across rounds)."""

TRAIN_LOSS = "train_loss"
TRAIN_ACC = "train_acc"
VAL_LOSS = "val_loss"
VAL_ACC = "val_acc"
LR = "lr"  # read from the optimizer during the epoch, never computed from the schedule's formula
GRAD_NORM = "grad_norm"  # mean over the epoch's steps of the pre-clip norm clip_grad_norm_ returns
GRAD_NORM_MAX = "grad_norm_max"
METRIC_KEYS = (TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC, LR, GRAD_NORM, GRAD_NORM_MAX)
