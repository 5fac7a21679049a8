"""Bad input: one line on stderr, exit code 2, no run created and an existing run left as it was."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from crashes import flags
from mlflow import MlflowClient

import aqtrack
from aqtrack.cli import main

EXIT_ERROR = 2


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """Exit code and the error line (progress lines before it are fine; only one error line is)."""
    capsys.readouterr()
    code = main(list(args))
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) <= 1, errors
    return code, lines[-1] if lines else ""


def all_runs() -> list:
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments) if experiments else []


def snapshot(run_id: str) -> tuple:
    """What must not change when a resume is refused."""
    client = MlflowClient()
    run = client.get_run(run_id)
    points = {k: len(client.get_metric_history(run_id, k)) for k in run.data.metrics}
    artifacts = sorted(f.path for f in client.list_artifacts(run_id, "checkpoints"))
    return run.info.status, run.info.end_time, dict(run.data.tags), points, artifacts


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == EXIT_ERROR
    assert err.startswith("aqtrack: error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.mark.parametrize(
    ("setting", "value", "needle"),
    [
        ("rounds", "0", "--rounds must be >= 1"),
        ("lr", "-0.1", "--lr must be > 0"),
        ("min_lr", "0.5", "--min-lr must be <= --lr"),
        ("batch_size", "0", "--batch-size must be >= 1"),
        ("checkpoint_interval", "0", "--checkpoint-interval must be >= 1"),
    ],
)
def test_invalid_setting_is_refused_before_any_run_exists(capsys, tiny, setting, value, needle):
    code, err = run_cli(capsys, "train", *flags({**tiny, setting: value}))
    assert_one_line_error(code, err, needle)
    assert all_runs() == []


def test_missing_data_file_names_the_file(capsys, tiny, tmp_path):
    code, err = run_cli(capsys, "train", *flags({**tiny, "data": tmp_path / "nope.npz"}))
    assert_one_line_error(code, err, "nope.npz", "not found")
    assert all_runs() == []


def test_malformed_data_file_names_file_and_problem(capsys, tiny, tmp_path):
    bad = tmp_path / "bad.npz"
    x = np.zeros((10, 20, 3), dtype=np.float32)
    x[4, 2, 1] = np.inf
    np.savez(bad, X=x, y=np.arange(10) % 2)
    code, err = run_cli(capsys, "train", *flags({**tiny, "data": bad}))
    assert_one_line_error(code, err, "bad.npz", "1 infinite value", "sample 4")
    assert all_runs() == []


def test_missing_values_are_refused_when_the_missing_policy_says_so(capsys, tiny, tmp_path):
    bad = tmp_path / "lost.npz"
    x = np.zeros((10, 20, 3), dtype=np.float32)
    x[4, 2, 1] = np.nan  # a lost value inside a recording: filled by default, refused here
    np.savez(bad, X=x, y=np.arange(10) % 2)
    code, err = run_cli(capsys, "train", *flags({**tiny, "data": bad, "missing": "refuse"}))
    assert_one_line_error(code, err, "lost.npz", "1 missing value")
    assert all_runs() == []


def test_output_dir_that_cannot_be_created_is_refused(capsys, tiny, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, err = run_cli(capsys, "train", *flags({**tiny, "output_dir": blocker / "outputs"}))
    assert_one_line_error(code, err, "--output-dir", "not writable")
    assert all_runs() == []


def test_unknown_run_id_is_refused(capsys):
    code, err = run_cli(capsys, "train", "--resume", "0123456789abcdef0123456789abcdef")
    assert_one_line_error(code, err, "0123456789abcdef0123456789abcdef", "no such run")


def test_malformed_run_id_is_refused_before_any_lookup(capsys):
    code, err = run_cli(capsys, "train", "--resume", "../../etc/passwd")
    assert_one_line_error(code, err, "not a run id")


def test_deleted_run_is_refused_with_how_to_restore_it(capsys, tiny):
    result = aqtrack.train(**{**tiny, "rounds": 1})
    MlflowClient().delete_run(result.run_id)

    code, err = run_cli(capsys, "train", "--resume", result.run_id, "--rounds", "2")

    assert_one_line_error(code, err, "is deleted", "mlflow runs restore")
    assert MlflowClient().get_run(result.run_id).info.lifecycle_stage == "deleted"


def test_run_without_checkpoint_is_refused_and_left_untouched(capsys):
    client = MlflowClient()
    run = client.create_run(client.create_experiment("elsewhere"))
    client.set_terminated(run.info.run_id, "FAILED")
    before = snapshot(run.info.run_id)

    code, err = run_cli(capsys, "train", "--resume", run.info.run_id)

    assert_one_line_error(code, err, run.info.run_id, "the run has no checkpoint")
    assert snapshot(run.info.run_id) == before


def test_checkpoint_whose_model_does_not_fit_the_data_is_refused_and_run_untouched(capsys, tiny, tmp_path):
    data = tmp_path / "moves.npz"
    rng = np.random.default_rng(0)
    np.savez(data, X=rng.normal(size=(40, 30, 6)).astype(np.float32), y=np.arange(40) % 3)
    result = aqtrack.train(**{**tiny, "data": str(data), "rounds": 1})
    before = snapshot(result.run_id)
    # The file changes under the run: now 4 channels instead of 6.
    np.savez(data, X=rng.normal(size=(40, 30, 4)).astype(np.float32), y=np.arange(40) % 3)

    code, err = run_cli(capsys, "train", "--resume", result.run_id, "--rounds", "2")

    assert_one_line_error(code, err, "moves.npz is not what the run trained on (its content changed")
    assert snapshot(result.run_id) == before


def test_changing_the_learning_rate_on_resume_is_refused_and_run_untouched(capsys, tiny):
    result = aqtrack.train(**{**tiny, "rounds": 1})
    before = snapshot(result.run_id)

    code, err = run_cli(capsys, "train", "--resume", result.run_id, "--rounds", "2", "--lr", "0.1")

    assert_one_line_error(code, err, "--lr=0.1", "start a new run")
    assert snapshot(result.run_id) == before


def test_resuming_a_complete_run_without_more_rounds_says_how_to_train_longer(capsys, tiny):
    result = aqtrack.train(**tiny)
    before = snapshot(result.run_id)

    code, err = run_cli(capsys, "train", "--resume", result.run_id)

    assert_one_line_error(code, err, "4 of 4 epochs", "--rounds above 2")
    assert snapshot(result.run_id) == before


def test_unreachable_tracking_server_fails_fast_with_the_uri(capsys, tiny, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    code, err = run_cli(capsys, "train", *flags(tiny))
    assert_one_line_error(code, err, "http://127.0.0.1:9", "MLFLOW_TRACKING_URI")
    assert not Path(tiny["output_dir"]).exists()


def test_nan_loss_stops_training_marks_the_run_failed_and_logs_no_nan(capsys, tiny):
    code, err = run_cli(capsys, "train", *flags({**tiny, "lr": "1e30"}))

    assert_one_line_error(code, err, "became nan in epoch 1", "lower --lr")
    (run,) = all_runs()
    assert run.info.status == "FAILED" and "TrainingDiverged" in run.data.tags["aqtrack.error"]
    assert MlflowClient().get_metric_history(run.info.run_id, "train_loss") == []


def test_read_only_output_dir_is_refused_before_any_run_exists(tiny, tmp_path):
    """A real read-only directory: mode 0555 for a normal user; root ignores modes, so for root a
    read-only tmpfs mounted in a private mount namespace (`unshare -m`)."""
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    command = [sys.executable, "-m", "aqtrack", "train", *flags({**tiny, "output_dir": read_only})]
    if os.geteuid() == 0:
        mount = f"mount -t tmpfs -o ro none {shlex.quote(str(read_only))}"
        command = ["unshare", "-m", "sh", "-c", f"{mount} && exec {shlex.join(command)}"]
    else:
        read_only.chmod(0o555)

    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)

    assert done.returncode == EXIT_ERROR, done.stderr[-2000:]
    reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert done.stderr.strip().splitlines()[-1] == (
        f"aqtrack: error: --output-dir {read_only}: not writable ({reason}); choose another directory"
    )
    assert all_runs() == []
