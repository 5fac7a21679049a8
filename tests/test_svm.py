"""The SVM stage: on by default at the end of training, off with --no-svm, refit by `aqtrack svm RUN_ID`."""

from __future__ import annotations

from pathlib import Path

import mlflow.sklearn
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

import aqtrack
from aqtrack.checkpoint import BEST
from aqtrack.cli import main
from aqtrack.data import load_data
from aqtrack.exports import SVM_MODEL
from aqtrack.finish import TAG_SVM
from aqtrack.metrics import SVM_VAL_ACC, SVM_VAL_F1
from aqtrack.model import ModelSpec, build_model, embed
from aqtrack.svm import fit_svm


def best_features(run_id: str, tiny: dict, tmp_path: Path) -> dict[str, np.ndarray]:
    """The best checkpoint's features of each split, computed here independently of aqtrack.finish."""
    path = MlflowClient().download_artifacts(run_id, f"checkpoints/{BEST}", str(tmp_path / "best"))
    best = torch.load(path, weights_only=True)
    network = build_model(ModelSpec(**best["model_spec"]))
    network.load_state_dict(best["model"])
    data = load_data("synthetic", n_train=tiny["n_train"], n_val=tiny["n_val"], val_fraction=0.2, seed=0)
    return {
        "x_train": embed(network, data.x_train)[0],
        "y_train": data.y_train,
        "x_val": embed(network, data.x_val)[0],
        "y_val": data.y_val,
    }


def test_fit_svm_scales_and_scores_on_the_validation_split() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(80) % 2
    x = rng.normal(0, 1, (80, 3)) + 1000.0 * y[:, None]  # separable, and far from unit scale
    result = fit_svm(x[:60], y[:60], x[60:], y[60:], c=1.0, kernel="rbf")
    assert result.val_acc == 1.0 and result.val_f1 == 1.0
    assert [name for name, _ in result.pipeline.steps] == ["scale", "svc"]
    assert result.pipeline.named_steps["svc"].C == 1.0


def test_training_fits_the_svm_on_the_best_features_and_logs_it_once(tiny, tmp_path):
    result = aqtrack.train(**tiny)

    client = MlflowClient()
    acc, f1 = (client.get_metric_history(result.run_id, k) for k in (SVM_VAL_ACC, SVM_VAL_F1))
    assert [m.step for m in acc] == [4] and [m.step for m in f1] == [4]
    f = best_features(result.run_id, tiny, tmp_path)
    pipeline = mlflow.sklearn.load_model(f"runs:/{result.run_id}/{SVM_MODEL}")
    predicted = pipeline.predict(f["x_val"])
    assert acc[0].value == pytest.approx(float((predicted == f["y_val"]).mean()))
    expected = fit_svm(f["x_train"], f["y_train"], f["x_val"], f["y_val"], c=1.0, kernel="rbf")
    assert (acc[0].value, f1[0].value) == pytest.approx((expected.val_acc, expected.val_f1))
    assert client.get_run(result.run_id).data.tags[TAG_SVM] == "kernel=rbf C=1"


def test_no_svm_leaves_the_svm_out_and_aqtrack_svm_fits_it_later(tiny, tmp_path, capsys):
    result = aqtrack.train(**tiny, svm=False)
    client = MlflowClient()
    assert client.get_metric_history(result.run_id, SVM_VAL_ACC) == []
    experiment_id = client.get_run(result.run_id).info.experiment_id
    assert list(client.search_logged_models([experiment_id], f"name = '{SVM_MODEL}'")) == []

    assert main(["svm", result.run_id, "--svm-kernel", "linear", "--svm-c", "0.5"]) == 0

    f = best_features(result.run_id, tiny, tmp_path)
    expected = fit_svm(f["x_train"], f["y_train"], f["x_val"], f["y_val"], c=0.5, kernel="linear")
    (acc,) = client.get_metric_history(result.run_id, SVM_VAL_ACC)
    (f1,) = client.get_metric_history(result.run_id, SVM_VAL_F1)
    assert acc.step == f1.step == 4
    assert (acc.value, f1.value) == pytest.approx((expected.val_acc, expected.val_f1))
    assert capsys.readouterr().out.strip() == (
        f"run {result.run_id}: SVM (kernel=linear, C=0.5) "
        f"svm_val_acc {expected.val_acc:.4f}, svm_val_f1 {expected.val_f1:.4f}"
    )
    assert client.get_run(result.run_id).data.tags[TAG_SVM] == "kernel=linear C=0.5"
    pipeline = mlflow.sklearn.load_model(f"runs:/{result.run_id}/{SVM_MODEL}")
    assert pipeline.named_steps["svc"].kernel == "linear"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["svm", "nope"], "aqtrack: error: svm 'nope': not a run id (32 lowercase hex characters)"),
        (["svm", "0" * 32], f"aqtrack: error: svm {'0' * 32}: no such run in "),
    ],
)
def test_aqtrack_svm_with_a_bad_run_id_says_so_in_one_line(capsys, args, error):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(error), err


def test_aqtrack_svm_of_a_run_without_checkpoints_says_so(capsys):
    client = MlflowClient()
    run = client.create_run(client.create_experiment("empty"))
    client.set_terminated(run.info.run_id)
    assert main(["svm", run.info.run_id, "--svm-c", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"aqtrack: error: svm {run.info.run_id}: no verified best checkpoint "
        "(the run has none: it stopped before its first epoch ended)"
    )
