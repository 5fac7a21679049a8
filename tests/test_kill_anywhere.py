"""Kill anywhere, resume exactly: real training processes are SIGKILLed at chosen points
(scripts/kill_at.py), then resumed by run id until done. The run must end as if nothing had happened:
the same weights and metrics as an uninterrupted run (bit for bit, on CPU), one point per epoch per
key, the whole history in the legacy report, and status FINISHED.

Each resume writes to a fresh --output-dir, as on another machine: only the run's artifacts can help,
so a truncated upload must be caught by its manifest and the resume must fall back to an older
checkpoint. One case resumes in the same directory, where the local copy is newer than the artifacts.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import torch
from crashes import flags, run_aqtrack
from mlflow import MlflowClient
from stores import own_store

from aqtrack.crash_points import POINTS
from aqtrack.names import LAST, METRIC_KEYS, REPORT_FILE

# 2 rounds x 3 epochs; periodic checkpoints after epochs 2, 4 and 6; best when val_acc improves.
SETTINGS = {
    "n_train": 64,
    "n_val": 32,
    "hidden": 8,
    "rounds": 2,
    "epochs_per_round": 3,
    "batch_size": 16,
    "checkpoint_interval": 2,
    "svm": False,  # the kills are in the epochs; tests/test_exports.py kills the finishing stage
    "log_model": False,
    "publish_interval": 0,  # every epoch published: the kill points count uploads epoch by epoch
}
EPOCHS = SETTINGS["rounds"] * SETTINGS["epochs_per_round"]
BATCHES_PER_EPOCH = SETTINGS["n_train"] // SETTINGS["batch_size"]


def outcome(run_id: str, output_dir: Path, tmp: Path) -> tuple[dict, dict, dict]:
    """(metric points by key, final weights, report history) of a run."""
    client = MlflowClient()
    points = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in METRIC_KEYS}
    path = client.download_artifacts(run_id, f"checkpoints/{LAST}", str(tmp / run_id))
    weights = torch.load(path, weights_only=True)["model"]
    report = json.loads((output_dir / run_id / REPORT_FILE).read_text())
    report = {k: v for k, v in report.items() if k not in ("timestamp", "run_id")}
    return {k: sorted(v) for k, v in points.items()}, weights, report


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> tuple[dict, dict, dict]:
    """An uninterrupted run, in a process of its own like the killed ones."""
    root = tmp_path_factory.mktemp("reference")
    with own_store(root, empty_store):
        done = run_aqtrack(root, "train", *flags({**SETTINGS, "output_dir": root / "out"}))
        assert done.returncode == 0, done.stderr[-3000:]
        (run,) = MlflowClient().search_runs(
            [MlflowClient().get_experiment_by_name("action-quality").experiment_id]
        )
        return outcome(run.info.run_id, root / "out", root)


def kill_then_resume(
    tmp_path: Path, kills: list[str], same_dir: bool = False, settings: dict = SETTINGS
) -> tuple[str, Path, str]:
    """Start a run, kill it at each point in turn (each resume may be killed again), then finish it.
    Returns the run id, the last output dir and what the resumes printed."""
    out = tmp_path / "out0"
    done = run_aqtrack(tmp_path, "train", *flags({**settings, "output_dir": out}), kill_at=kills[0])
    assert done.returncode == -signal.SIGKILL, f"not killed at {kills[0]}: {done.stderr[-3000:]}"
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("action-quality").experiment_id])
    run_id, said = run.info.run_id, ""
    for i, kill in enumerate([*kills[1:], None], 1):
        out = out if same_dir else tmp_path / f"out{i}"
        done = run_aqtrack(tmp_path, "train", "--resume", run_id, "--output-dir", str(out), kill_at=kill)
        expected = -signal.SIGKILL if kill else 0
        assert done.returncode == expected, f"resume {i} ({kill or 'to the end'}): {done.stderr[-3000:]}"
        said += done.stderr
    return run_id, out, said


def assert_as_if_never_killed(run_id: str, out: Path, reference: tuple, tmp_path: Path) -> None:
    points, weights, report = outcome(run_id, out, tmp_path)
    ref_points, ref_weights, ref_report = reference
    for key, series in points.items():
        assert [step for step, _ in series] == list(range(1, EPOCHS + 1)), key  # one point per epoch
    assert points == ref_points
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    assert report == ref_report and len(report["control_losses"]) == EPOCHS
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"


def first_epoch_trained(said: str) -> int | None:
    """The global epoch of the first progress line a resume printed (None: it trained none)."""
    found = re.search(r"^epoch=(\d+)/\d+ ", said, re.MULTILINE)
    return int(found[1]) if found else None


# Validation accuracy of this tiny run improves at epochs 1 and 6 only: best_... is written then.
@pytest.mark.parametrize(
    ("kill", "resumes_at", "resume_says"),
    [
        (f"batch:{2 * BATCHES_PER_EPOCH + 2}", 3, ""),  # mid-epoch 3
        ("evaluate:4", 4, ""),  # as epoch 4's validation begins
        ("checkpoint-write:5", 5, ""),  # a torn local temporary file
        ("checkpoint-local:2", 2, ""),  # epoch 2's files written, nothing uploaded
        ("report:3", 3, ""),  # the report written, nothing of epoch 3 sent yet
        ("upload-periodic:2", 4, ""),  # epoch 4's periodic checkpoint cut off halfway
        ("upload-best:1", 2, ""),  # nothing valid uploaded yet: resumes from the local copy
        ("upload-last:3", 3, "last.pt: refused: .*truncated"),  # back to epoch 2's periodic one
        ("uploaded-last:4", 5, "last.pt: refused: .*manifest"),  # new last.pt, old manifest
        ("uploaded-manifest:5", 6, ""),  # epoch 5's files are in, its metrics and tag are not
        ("logged:3", 4, ""),  # epoch 3 wholly published
        ("logged:6", None, "all 6 epochs were already trained; finishing it"),  # not yet FINISHED
    ],
)
def test_killed_at_a_point_then_resumed_ends_as_if_never_killed(
    tmp_path, reference, kill, resumes_at, resume_says
):
    # upload-best:1 resumes in the same directory: the run has no valid checkpoint, the local copy does.
    run_id, out, said = kill_then_resume(tmp_path, [kill], same_dir=kill == "upload-best:1")
    assert first_epoch_trained(said) == resumes_at, said[-3000:]
    assert re.search(resume_says, said), said[-3000:]
    assert_as_if_never_killed(run_id, out, reference, tmp_path)


# Within a publishing budget longer than the run: epoch 1 is published as soon as it ends, epochs 2-6
# wait for the end of training. A kill in between loses nothing measured: on the same machine the resume
# publishes the local checkpoint (and the history it holds) first; on another machine it retrains the
# epochs since epoch 1, bit-exactly.
@pytest.mark.parametrize(
    ("kill", "same_dir", "resumes_at"),
    [
        ("checkpoint-local:4", True, 5),  # epoch 4 checkpointed locally, only epoch 1 published
        ("checkpoint-local:4", False, 2),  # the same, resumed where only the published epoch 1 is
        ("evaluate:6", False, 2),  # mid-epoch 6 on another machine
    ],
)
def test_killed_between_two_publishes_then_resumed_ends_as_if_never_killed(
    tmp_path, reference, kill, same_dir, resumes_at
):
    budget = {**SETTINGS, "publish_interval": 300}
    run_id, out, said = kill_then_resume(tmp_path, [kill], same_dir=same_dir, settings=budget)
    assert first_epoch_trained(said) == resumes_at, said[-3000:]
    assert_as_if_never_killed(run_id, out, reference, tmp_path)


def test_killed_again_while_resuming_still_ends_as_if_never_killed(tmp_path, reference):
    kills = ["upload-last:2", "reopened:1", f"batch:{BATCHES_PER_EPOCH + 1}", "uploaded-last:3"]
    run_id, out, said = kill_then_resume(tmp_path, kills)
    assert "last.pt: refused" in said
    assert_as_if_never_killed(run_id, out, reference, tmp_path)


def test_resume_of_a_run_with_no_valid_checkpoint_anywhere_fails_naming_each_refusal(tmp_path):
    out = tmp_path / "out0"
    done = run_aqtrack(tmp_path, "train", *flags({**SETTINGS, "output_dir": out}), kill_at="upload-best:1")
    assert done.returncode == -signal.SIGKILL
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("action-quality").experiment_id])

    done = run_aqtrack(
        tmp_path, "train", "--resume", run.info.run_id, "--output-dir", str(tmp_path / "elsewhere")
    )

    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"aqtrack: error: --resume {run.info.run_id}: no valid checkpoint (")
    assert "best_action_quality_model.pt: no manifest (its upload never finished)" in error
    assert client.get_run(run.info.run_id).info.status == "RUNNING"  # untouched


@pytest.mark.parametrize("point", sorted(POINTS))
def test_every_crash_point_hooks_an_attribute_the_code_has(point):
    """scripts/kill_at.py replaces these attributes: a rename would make its point never fire."""
    import importlib

    hook = POINTS[point][0]
    parts = hook.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            owner = getattr(owner, name)
        assert callable(owner), hook
        return
    pytest.fail(f"{hook}: no such module")
