"""Runs are never left lying, and one process trains a run at a time: SIGTERM, uncaught exceptions,
divergence, concurrent resumes, runs of another experiment or held on another machine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from crashes import flags
from mlflow import MlflowClient

import aqtrack
import aqtrack.cli
from aqtrack import names
from aqtrack.errors import ResumeError, TrackingError, TrainingDiverged
from aqtrack.jobs.pipeline import checkpoint_dir
from aqtrack.names import CHECKPOINT_EPOCH_TAG, LAST
from aqtrack.tracking.lock import run_lock
from aqtrack.training import interrupts
from aqtrack.training.checkpoint import Manifest, manifest_path, verify_checkpoint


def start_training(tmp_path: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "aqtrack", "train", *args]
    return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def only_run():
    client = MlflowClient()
    experiment = client.get_experiment_by_name("action-quality")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return runs[0] if len(runs) == 1 else None


def wait_for_epoch(process: subprocess.Popen, epoch: int, timeout: float = 120) -> str:
    """Wait until the process's run has published `epoch`; return its run id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        run = only_run()
        if run and int(run.data.tags.get(CHECKPOINT_EPOCH_TAG, 0)) >= epoch:
            return run.info.run_id
        time.sleep(0.1)
    process.kill()
    pytest.fail(f"epoch {epoch} not published within {timeout} s")


def val_acc_steps(run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, "val_acc"))


# 300 s: a publishing budget longer than the run, so the stop itself publishes the epochs since epoch 1.
@pytest.mark.parametrize("publish_interval", [0, 300])
def test_sigterm_stops_after_a_fully_published_epoch_marks_the_run_killed_and_it_resumes(
    tiny, tmp_path, publish_interval
):
    settings = {**tiny, "rounds": 1, "epochs_per_round": 40, "publish_interval": publish_interval}
    process = start_training(tmp_path, *flags(settings))
    run_id = wait_for_epoch(process, 3 if publish_interval == 0 else 1)  # the budget: 1, then the end
    local = checkpoint_dir(settings["output_dir"], run_id) / LAST
    while not local.exists() or Manifest.read(manifest_path(local)).epoch < 3:  # 2 epochs held back
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.05)

    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)

    assert process.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines()[-1] == "aqtrack: interrupted (SIGTERM)"
    assert f"continue it with `aqtrack train --resume {run_id}`" in err
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED"
    published = int(run.data.tags[CHECKPOINT_EPOCH_TAG])
    assert published >= 3  # with the budget: the epochs it held back went out with the stop
    assert val_acc_steps(run_id) == list(range(1, published + 1))  # no epoch logged but not checkpointed
    assert verify_checkpoint(local, Manifest.read(manifest_path(local))).epoch == published

    resumed = aqtrack.train(resume=run_id)

    assert resumed.epochs == 40 and val_acc_steps(run_id) == list(range(1, 41))
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"


def test_a_stop_signal_while_an_epoch_is_published_waits_until_it_is():
    published = []
    with interrupts.stop_signals(), pytest.raises(interrupts.Interrupted) as stopped:
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            published.append("checkpoint")  # still runs: the signal waits
        published.append("next epoch")  # never runs
    assert published == ["checkpoint"]
    assert stopped.value.signum == signal.SIGTERM


def test_a_second_stop_signal_while_publishing_stops_at_once():
    published = []
    with interrupts.stop_signals(), pytest.raises(interrupts.Interrupted), interrupts.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        published.append("checkpoint")
    assert published == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_an_uncaught_exception_in_a_script_marks_the_run_failed_not_finished(tiny, tmp_path):
    script = textwrap.dedent(f"""
        import aqtrack, aqtrack.training.loop
        real = aqtrack.training.loop.evaluate
        calls = []
        def evaluate(*args):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("boom in epoch 3")
            return real(*args)
        aqtrack.training.loop.evaluate = evaluate
        aqtrack.train(**{tiny!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)

    assert done.returncode == 1 and "RuntimeError: boom in epoch 3" in done.stderr
    run = only_run()
    assert run.info.status == "FAILED"
    assert run.data.tags["aqtrack.error"] == "RuntimeError: boom in epoch 3"
    assert val_acc_steps(run.info.run_id) == [1, 2]


def test_divergence_names_epoch_and_batch_fails_the_run_and_keeps_the_good_checkpoints(tiny):
    def poison_after_epoch_2(state):
        if state.epoch == 2:  # after its checkpoint: epoch 3 starts from NaN weights
            for p in model.parameters():
                p.data.fill_(float("nan"))

    import aqtrack.training.loop

    real_build = aqtrack.training.loop.build_trainer

    def build(*args):
        nonlocal model
        trainer = real_build(*args)
        model = trainer.model
        return trainer

    model = None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("aqtrack.jobs.pipeline.build_trainer", build)
        with pytest.raises(TrainingDiverged) as diverged:
            aqtrack.train(callbacks=[poison_after_epoch_2], **tiny)

    assert "train_loss became nan in epoch 3 (first at batch 1 of 4)" in str(diverged.value)
    assert "the checkpoints of epochs 1-2 are kept" in str(diverged.value)
    run = only_run()
    assert run.info.status == "FAILED" and "TrainingDiverged" in run.data.tags["aqtrack.error"]
    assert val_acc_steps(run.info.run_id) == [1, 2] and run.data.tags[CHECKPOINT_EPOCH_TAG] == "2"
    local = checkpoint_dir(tiny["output_dir"], run.info.run_id) / LAST
    state = verify_checkpoint(local, Manifest.read(manifest_path(local)))
    assert state.epoch == 2 and all(torch.isfinite(t).all() for t in state.model.values())


def test_run_lock_is_exclusive_and_released_with_the_block():
    with run_lock("sqlite:///x.db", "a" * 32):
        with (
            pytest.raises(
                ResumeError, match=f"being trained by another process on this machine .pid {os.getpid()}"
            ),
            run_lock("sqlite:///x.db", "a" * 32),
        ):
            pass
        with run_lock("sqlite:///other.db", "a" * 32):  # another store: another run
            pass
    with run_lock("sqlite:///x.db", "a" * 32):
        pass


def test_a_second_process_resuming_the_same_run_is_refused(tiny, tmp_path):
    first = aqtrack.train(**{**tiny, "rounds": 1})
    more = ["--resume", first.run_id, "--rounds", "30"]
    process = start_training(tmp_path, *more)
    wait_for_epoch(process, 3)

    second = subprocess.run(
        [sys.executable, "-m", "aqtrack", "train", *more], cwd=tmp_path, capture_output=True, text=True
    )
    process.communicate(timeout=300)

    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1] == (
        f"aqtrack: error: run {first.run_id} is being trained by another process on this machine "
        f"(pid {process.pid}); wait for it to finish, or stop it and resume again"
    )
    assert process.returncode == 0
    assert val_acc_steps(first.run_id) == list(range(1, 61))


def _held_elsewhere(run_id: str, seconds_ago: float) -> None:
    client = MlflowClient()
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, names.TAG_OWNER, "another-machine:4242")
    client.set_tag(run_id, names.TAG_HEARTBEAT, str(int(time.time() - seconds_ago)))


def test_a_run_running_on_another_machine_that_published_recently_is_refused(tiny):
    first = aqtrack.train(**{**tiny, "rounds": 1})
    _held_elsewhere(first.run_id, seconds_ago=30)

    with pytest.raises(
        ResumeError, match=r"the run is RUNNING on another-machine \(last epoch published 3\d s ago"
    ):
        aqtrack.train(resume=first.run_id, rounds=2)
    assert val_acc_steps(first.run_id) == [1, 2]


def test_a_run_running_on_another_machine_that_went_quiet_is_taken_over(tiny):
    first = aqtrack.train(**{**tiny, "rounds": 1})
    _held_elsewhere(first.run_id, seconds_ago=3600)

    resumed = aqtrack.train(resume=first.run_id, rounds=2)

    assert resumed.epochs == 4 and MlflowClient().get_run(first.run_id).info.status == "FINISHED"
    assert (
        MlflowClient().get_run(first.run_id).data.tags[names.TAG_OWNER]
        == f"{socket.gethostname()}:{os.getpid()}"
    )


def test_resuming_with_another_experiment_is_refused_and_the_run_untouched(tiny):
    first = aqtrack.train(**{**tiny, "rounds": 1, "experiment": "squats"})

    with pytest.raises(ResumeError, match="the run is in experiment 'squats', not 'lunges'"):
        aqtrack.train(resume=first.run_id, rounds=2, experiment="lunges")
    assert MlflowClient().get_run(first.run_id).info.status == "FINISHED"
    assert aqtrack.train(resume=first.run_id, rounds=2, experiment="squats").epochs == 4


def test_a_server_that_accepts_and_never_answers_fails_fast_at_start(tiny, monkeypatch):
    with socket.socket() as silent:  # listens (the kernel accepts connections) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        with pytest.raises(TrackingError, match=f"cannot use tracking store {url}: no answer within 3 s"):
            aqtrack.train(**tiny)
    assert not Path(tiny["output_dir"]).exists()


class _TouchMarker:
    """Unpickling this creates a file: what a booby-trapped checkpoint would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_booby_trapped_checkpoints_with_matching_manifests_are_refused_and_never_run(tiny, tmp_path, capsys):
    first = aqtrack.train(**{**tiny, "rounds": 1})
    client, marker = MlflowClient(), tmp_path / "pwned"
    trap = tmp_path / "trap"
    for name in (LAST, "best_action_quality_model.pt", "action_quality_round_1_epoch_2.pt"):
        path = trap / name
        path.parent.mkdir(exist_ok=True)
        torch.save({"format": "aqtrack.checkpoint", "config": _TouchMarker(marker)}, path)
        manifest = Manifest.of(path, epoch=2, run_id=first.run_id).write(trap)  # an attacker can hash too
        client.log_artifact(first.run_id, str(path), "checkpoints")
        client.log_artifact(first.run_id, str(manifest), "checkpoints")

    code = aqtrack.cli.main(
        ["train", "--resume", first.run_id, "--rounds", "2", "--output-dir", str(tmp_path / "b")]
    )

    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and error.startswith(f"aqtrack: error: --resume {first.run_id}: no valid checkpoint (")
    assert error.count("refused to load: it holds objects other than tensors and plain values") == 3
    assert not marker.exists()
    assert val_acc_steps(first.run_id) == [1, 2]
