"""Every name a run is read by: metric keys, run tags, artifact paths and the legacy report's keys,
defined once. A reader of runs (the MLflow UI, a script, the legacy visualizer) finds them here."""

# --- Metric keys ---
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

# --- Run tags (and the run artifact every run has) ---
# Run tags.
TAG_RESUMED_FROM = "aqtrack.resumed_from"
TAG_CONTINUED_IN = "aqtrack.continued_in"
TAG_RESUME_COUNT = "aqtrack.resume_count"
TAG_ERROR = "aqtrack.error"
TAG_DATA_SOURCE = "aqtrack.data_source"
TAG_VERSION = "aqtrack.version"  # the aqtrack version that started the run
TAG_FILLED_VALUES = "aqtrack.data_filled_values"  # missing values the missing-frame policy filled
TAG_HEARTBEAT = "aqtrack.heartbeat"  # unix time of the run's last epoch-end tag update
TAG_OWNER = "aqtrack.owner"  # host:pid of the process training the run
TAG_ROUNDS = "aqtrack.rounds"  # params are immutable; the current target when resumed with more rounds
TAG_FORKED_FROM = "aqtrack.forked_from"  # on a fork: "<source run id>@<epoch>"
TAG_FORKS = "aqtrack.forks"  # on a fork's source: "<fork run id>@<epoch>,..." (newest last)
TAG_REFIT_OF = "aqtrack.refit_of"  # on an `aqtrack svm` refit run: the training run it refits
PARENT_RUN_TAG = "mlflow.parentRunId"  # what the MLflow UI nests runs by
# Cross-validation: the parent run holds the plan and the aggregate, one nested run per fold.
TAG_CV = "aqtrack.cv"  # on a CV parent: its --folds ("5", "loso")
TAG_CV_PLANNED = "aqtrack.cv_folds_planned"  # on a CV parent: K
TAG_CV_FINISHED = "aqtrack.cv_folds_finished"  # on a CV parent: how many fold runs are FINISHED
TAG_CV_PARENT = "aqtrack.cv_parent"  # on a fold run: its CV parent's run id (resume finds folds by it)
TAG_CV_FOLD = "aqtrack.cv_fold"  # on a fold run: its fold, 1..K
MLFLOW_RUN_ENV = "MLFLOW_RUN_ID"  # set by `mlflow run` for the run it created; users set it to re-attach
DATASET_STATS_ARTIFACT = "dataset_stats.json"

# --- Artifact paths, model names and the tag of a logged model ---
NETWORK_MODEL = "model"  # runs:/<run id>/model
SVM_MODEL = "svm"  # runs:/<run id>/svm
PLOTS_DIR = "plots"
CURVES_ARTIFACT = f"{PLOTS_DIR}/training_curves.png"
CONFUSION_ARTIFACT = f"{PLOTS_DIR}/confusion_matrix.png"  # the validation split's
TEST_CONFUSION_ARTIFACT = f"{PLOTS_DIR}/test_confusion_matrix.png"
TEST_DIR = "test"
PER_CLASS_ARTIFACT = f"{TEST_DIR}/per_class_metrics.json"  # precision, recall, F1, support per class
# A cross-validation fold's predictions on its test split (its fold), what the parent pools.
TEST_PREDICTIONS_ARTIFACT = f"{TEST_DIR}/predictions.csv"
TAG_BEST_EPOCH = "aqtrack.best_epoch"  # on a LoggedModel: the best checkpoint it was made from
# A cross-validation's parent run.
CV_DIR = "cv"
CV_ASSIGNMENT = f"{CV_DIR}/fold_assignment.csv"  # sample_id, subject, label, fold: every sample
CV_FOLDS_TABLE = f"{CV_DIR}/folds.json"  # one row per finished fold (an MLflow table)
CV_PREDICTIONS = f"{CV_DIR}/oof_predictions.csv"  # out-of-fold: sample_id, subject, fold, label, ...
CV_CONFUSION = f"{CV_DIR}/confusion_matrix.png"  # of the pooled out-of-fold predictions
CV_FOLDS_FIGURE = f"{CV_DIR}/folds.png"  # the folds' test scores side by side

# --- Checkpoint files: in a run's local folder and under its `checkpoints/` artifacts ---
LAST = "last.pt"
BEST = "best_action_quality_model.pt"
ARTIFACT_DIR = "checkpoints"  # in the MLflow run
CHECKPOINT_EPOCH_TAG = "aqtrack.checkpoint_epoch"  # run tag: newest epoch whose last.pt is uploaded
MANIFEST_SUFFIX = ".manifest.json"

# --- Gradient alerts: run tags naming the epochs ---
TAG_GRAD_EXPLOSION_EPOCHS = "aqtrack.grad_explosion_epochs"
TAG_GRAD_VANISHING_EPOCHS = "aqtrack.grad_vanishing_epochs"

# --- The SVM stage's tag; the legacy report's per-epoch series and the metric each holds ---
TAG_SVM = "aqtrack.svm"  # run tag: the settings of the SVM the run's svm_* metrics come from
# The legacy report's names of the per-epoch metrics (the extras use the metric names themselves).
REPORT_SERIES = {
    "control_losses": TRAIN_LOSS,
    "grad_norms": GRAD_NORM,
    "grad_norms_max": GRAD_NORM_MAX,
    "learning_rates": LR,
    **{k: k for k in (TRAIN_ACC, VAL_LOSS, VAL_ACC, VAL_BALANCED_ACC, VAL_F1_MACRO)},
}

# --- The legacy report (`experiment_report.json`, read by the existing visualizer and monitor) ---
REPORT_FILE = "experiment_report.json"
LEGACY_KEYS = (
    "control_losses",
    "batch_losses",
    "grad_norms",
    "learning_rates",
    "current_epoch",
    "total_batches",
    "dataset_stats",
    "timestamp",
)

# --- MLflow's own tags that aqtrack writes ---
NOTE_TAG = "mlflow.note.content"
RUN_NAME_TAG = "mlflow.runName"

# --- Local folders under --output-dir ---
CHECKPOINTS_DIR = "checkpoints"  # in a run's local folder, as in the run's artifacts
LEGACY_CHECKPOINTS = "checkpoints"  # aqtrack <= 0.1 kept local copies in <output_dir>/checkpoints/<run id>/
