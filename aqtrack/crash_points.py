"""The points where `scripts/kill_at.py` SIGKILLs a training to prove that a resume recovers, and the
function each one wraps. They are a contract with the code: each hook is called through the attribute
named here (module attribute or MlflowClient method), so renaming it, or calling it by another path,
breaks the kill-anywhere suite. `tests/test_kill_anywhere.py` checks every hook resolves.

In the order an epoch reaches them, then the cross-validation's (they count across the folds a process
trains).
"""

# point: (hooked attribute, when the process dies)
POINTS: dict[str, tuple[str, str]] = {
    "batch": ("torch.nn.utils.clip_grad_norm_", "before the N-th optimizer step (mid-epoch)"),
    "evaluate": ("aqtrack.training.loop.evaluate", "as the N-th validation pass begins"),
    "checkpoint-write": (
        "aqtrack.training.checkpoint.torch.save",
        "halfway through writing the N-th local checkpoint file (a torn temporary file)",
    ),
    "checkpoint-local": (
        "aqtrack.training.loop.write_checkpoints",
        "after the N-th epoch's checkpoint files were written, before any upload",
    ),
    "report": (
        "aqtrack.outputs.report.write_report",
        "as the N-th legacy report is written (before the epoch is sent)",
    ),
    "upload-periodic": (
        "mlflow.MlflowClient.log_artifact",
        "halfway through uploading the N-th periodic checkpoint (a truncated artifact)",
    ),
    "upload-best": (
        "mlflow.MlflowClient.log_artifact",
        "halfway through uploading the N-th best checkpoint (a truncated artifact)",
    ),
    "upload-last": ("mlflow.MlflowClient.log_artifact", "halfway through uploading the N-th last.pt"),
    "uploaded-last": (
        "mlflow.MlflowClient.log_artifact",
        "after the N-th last.pt upload, before its manifest's",
    ),
    "uploaded-manifest": (
        "mlflow.MlflowClient.log_artifact",
        "after the N-th last.pt manifest upload, before the epoch's metrics and tag",
    ),
    "logged": ("mlflow.MlflowClient.log_batch", "right after the N-th batch of epoch metrics was logged"),
    "tagged": ("mlflow.MlflowClient.log_batch", "right after the N-th checkpoint-epoch tag was set"),
    "reopened": (
        "mlflow.MlflowClient.update_run",
        "right after a resumed run was marked RUNNING again, before any epoch",
    ),
    "model-uploaded": (
        "mlflow.MlflowClient.log_model_artifacts",
        "after the files of the N-th MLflow model were uploaded, before it was marked READY",
    ),
    "fold-done": (
        "aqtrack.jobs.crossval._fold_done",
        "between folds: the N-th fold's run is FINISHED, its parent not yet told",
    ),
    "cv-aggregated": (
        "aqtrack.jobs.cv_aggregate.log_scores",
        "the N-th aggregate's metrics and per-fold table are logged, its predictions and figures not yet",
    ),
}
CV_POINTS = ("fold-done", "cv-aggregated")  # reached by `aqtrack cv` only
TRAIN_POINTS = tuple(p for p in POINTS if p not in CV_POINTS)
