"""Every way into a run lands in the right run: given vs default settings, MLFLOW_RUN_ID, a resume
that only has to finish, `--resume auto`, refusals before any store exists, runs' own local folders."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from crashes import flags, run_aqtrack, stop_at
from mlflow import MlflowClient

import aqtrack
from aqtrack import names
from aqtrack.cli import main
from aqtrack.errors import ConfigError, TrackingLost
from aqtrack.names import (
    BEST,
    CHECKPOINT_EPOCH_TAG,
    LAST,
    MANIFEST_SUFFIX,
    METRIC_KEYS,
    NETWORK_MODEL,
    REPORT_FILE,
    TAG_BEST_EPOCH,
)
from aqtrack.tracking.exports import ready_models
from aqtrack.tracking.lock import run_lock
from aqtrack.training.checkpoint import periodic_name


def steps(run_id: str, key: str = "val_acc") -> list[int]:
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, key))


def points(run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient()
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in METRIC_KEYS}


def artifact_manifest(run_id: str, name: str, tmp: Path) -> dict:
    path = MlflowClient().download_artifacts(run_id, f"checkpoints/{name}{MANIFEST_SUFFIX}", str(tmp))
    return json.loads(Path(path).read_text())


@pytest.fixture
def tiny_no_svm(tiny: dict) -> dict:
    return {**tiny, "svm": False}


# --- given vs default ----------------------------------------------------------------------------------


def test_a_given_setting_counts_whatever_its_value(tiny_no_svm):
    first = aqtrack.train(**tiny_no_svm)  # 2 rounds; the default is 3
    resumed = aqtrack.train(resume=first.run_id, rounds=3)  # equal to the default, and given
    assert resumed.epochs == 6 and steps(first.run_id) == [1, 2, 3, 4, 5, 6]


# --- MLFLOW_RUN_ID -------------------------------------------------------------------------------------


def test_mlflow_run_id_of_an_empty_run_is_adopted_once_and_a_second_training_gets_its_own_run(
    tiny_no_svm, monkeypatch
):
    client = MlflowClient()
    made = client.create_run(client.create_experiment("made-by-mlflow-run")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", made)

    first = aqtrack.train(**tiny_no_svm)
    second = aqtrack.train(**tiny_no_svm)  # e.g. a sweep script under `mlflow run`: its own trial

    assert first.run_id == made and second.run_id != made
    assert steps(made) == [1, 2, 3, 4] and steps(second.run_id) == [1, 2, 3, 4]  # one history each
    assert client.get_run(second.run_id).info.experiment_id == client.get_run(made).info.experiment_id
    assert client.get_run(made).info.status == "FINISHED"


def test_mlflow_run_id_of_a_run_holding_a_training_is_never_written_into(tiny_no_svm, monkeypatch, caplog):
    earlier = aqtrack.train(**tiny_no_svm)
    before = points(earlier.run_id)
    monkeypatch.setenv("MLFLOW_RUN_ID", earlier.run_id)

    with caplog.at_level(logging.WARNING, logger="aqtrack"):
        new = aqtrack.train(**tiny_no_svm)

    assert new.run_id != earlier.run_id and points(earlier.run_id) == before
    assert f"MLFLOW_RUN_ID={earlier.run_id} names a run that holds a training already" in caplog.text
    assert f"aqtrack train --resume {earlier.run_id}" in caplog.text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not-a-run", "MLFLOW_RUN_ID='not-a-run': not a run id"),
        ("0" * 32, f"MLFLOW_RUN_ID={'0' * 32}: no such run"),
    ],
)
def test_a_bad_mlflow_run_id_is_one_line_naming_the_variable(tiny_no_svm, monkeypatch, value, message):
    monkeypatch.setenv("MLFLOW_RUN_ID", value)
    with pytest.raises(ConfigError, match=message) as info:
        aqtrack.train(**tiny_no_svm)
    assert "unset it" in str(info.value)


def test_two_processes_given_the_same_empty_mlflow_run_id_make_two_runs(tiny_no_svm, tmp_path):
    client = MlflowClient()
    made = client.create_run(client.create_experiment("sweep")).info.run_id
    env = {**os.environ, "MLFLOW_RUN_ID": made}
    command = [sys.executable, "-m", "aqtrack", "train", *flags(tiny_no_svm)]
    processes = [subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE) for _ in range(2)]
    for p in processes:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-3000:]
    runs = client.search_runs([client.get_run(made).info.experiment_id])
    assert len(runs) == 2 and made in {r.info.run_id for r in runs}
    assert all(steps(r.info.run_id) == [1, 2, 3, 4] for r in runs)


# --- a resume that only has to finish ------------------------------------------------------------------


def only_run_id() -> str:
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("action-quality").experiment_id])
    return run.info.run_id


def assert_finished_with_its_newest_checkpoints(run_id: str, epochs: int, tmp: Path) -> None:
    """FINISHED, last.pt of the last epoch, and model, best checkpoint and `aqtrack svm` agreeing (a run
    with log_model on)."""
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[CHECKPOINT_EPOCH_TAG] == str(epochs)
    assert artifact_manifest(run_id, LAST, tmp / "last")["epoch"] == epochs
    best = torch.load(
        client.download_artifacts(run_id, f"checkpoints/{BEST}", str(tmp / "best")), weights_only=True
    )
    assert best["epoch"] == best["best_epoch"] == max(range(1, epochs + 1), key=best_key(run_id))
    (model,) = ready_models(client, run_id, NETWORK_MODEL)
    assert model.tags[TAG_BEST_EPOCH] == str(best["epoch"])
    refit = aqtrack.fit_svm(run_id)
    assert client.get_run(refit.run_id).data.params["best_epoch"] == str(best["epoch"])


def best_key(run_id: str):
    values = dict(points(run_id)["val_acc"])
    return lambda e: (values[e], -e)  # the first epoch of the highest val_acc


def test_killed_in_the_last_epoch_after_writing_its_checkpoints_a_resume_publishes_them_then_finishes(
    tiny, tmp_path
):
    out = tmp_path / "out"
    killed = run_aqtrack(
        tmp_path,
        "train",
        *flags({**tiny, "log_model": True, "output_dir": out}),
        kill_at="checkpoint-local:4",
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_id = only_run_id()
    assert MlflowClient().get_run(run_id).data.tags[CHECKPOINT_EPOCH_TAG] == "3"

    assert main(["train", "--resume", run_id, "--output-dir", str(out), "-q"]) == 0

    assert steps(run_id) == [1, 2, 3, 4]
    names = {Path(f.path).name for f in MlflowClient().list_artifacts(run_id, "checkpoints")}
    assert periodic_name(2, 2) in names and periodic_name(2, 2) + MANIFEST_SUFFIX in names
    assert_finished_with_its_newest_checkpoints(run_id, 4, tmp_path)


def test_a_periodic_checkpoint_written_but_never_uploaded_is_published_by_the_resume(tiny, tmp_path):
    out = tmp_path / "out"
    killed = run_aqtrack(
        tmp_path,
        "train",
        *flags({**tiny, "log_model": True, "output_dir": out}),
        kill_at="checkpoint-local:2",
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_id = only_run_id()

    assert main(["train", "--resume", run_id, "--output-dir", str(out), "-q"]) == 0

    assert artifact_manifest(run_id, periodic_name(1, 2), tmp_path / "p")["epoch"] == 2
    assert steps(run_id) == [1, 2, 3, 4]
    assert_finished_with_its_newest_checkpoints(run_id, 4, tmp_path)


def test_stopped_for_lost_tracking_in_the_last_epoch_a_resume_publishes_the_local_checkpoints_first(
    tiny, tmp_path, monkeypatch
):
    down = []

    def unreachable(real):
        def call(*args, **kwargs):
            if down:
                raise ConnectionError("tracking server unreachable")
            return real(*args, **kwargs)

        return call

    for name in ("log_artifact", "log_batch"):
        monkeypatch.setattr(MlflowClient, name, unreachable(getattr(MlflowClient, name)))
    lose_server_in_epoch_4 = lambda state: down.append(1) if state.epoch == 4 else None  # noqa: E731
    with pytest.raises(TrackingLost, match="training stopped; the checkpoint of epoch 4 is in"):
        aqtrack.train(**{**tiny, "log_model": True}, tracking_patience=0, callbacks=[lose_server_in_epoch_4])
    run_id = only_run_id()
    assert MlflowClient().get_run(run_id).info.status == "RUNNING"  # no one to tell; resume accepts it
    assert MlflowClient().get_run(run_id).data.tags[CHECKPOINT_EPOCH_TAG] == "3"
    down.clear()  # the server is back

    aqtrack.train(resume=run_id)

    assert steps(run_id) == [1, 2, 3, 4]
    assert_finished_with_its_newest_checkpoints(run_id, 4, tmp_path)


# --- --resume auto -------------------------------------------------------------------------------------


def test_resume_auto_continues_only_its_own_job_and_passes_over_other_runs(tiny_no_svm, mlflow_store):
    with pytest.raises(KeyboardInterrupt):  # this job, stopped after epoch 2
        aqtrack.train(**tiny_no_svm, run_name="mine", callbacks=[stop_at(3, KeyboardInterrupt())])
    with pytest.raises(KeyboardInterrupt):  # another job (another lr), newer, stopped too
        aqtrack.train(
            **tiny_no_svm, lr=0.01, run_name="other-lr", callbacks=[stop_at(3, KeyboardInterrupt())]
        )
    with pytest.raises(KeyboardInterrupt):  # the same job, newest, but held by a live process
        aqtrack.train(**tiny_no_svm, run_name="busy", callbacks=[stop_at(2, KeyboardInterrupt())])
    client = MlflowClient()
    ids = {r.info.run_name: r.info.run_id for r in client.search_runs(["1"])}

    with run_lock(mlflow_store, ids["busy"]):
        continued = aqtrack.train(resume="auto", **tiny_no_svm)

    assert continued.run_id == ids["mine"] and steps(ids["mine"]) == [1, 2, 3, 4]
    assert steps(ids["other-lr"]) == [1, 2] and steps(ids["busy"]) == [1]
    assert client.get_run(ids["other-lr"]).info.status == "KILLED"


def test_resume_auto_with_nothing_of_its_job_to_continue_starts_a_new_run(tiny_no_svm):
    with pytest.raises(KeyboardInterrupt):
        aqtrack.train(**tiny_no_svm, lr=0.01, callbacks=[stop_at(3, KeyboardInterrupt())])
    fresh = aqtrack.train(resume="auto", **tiny_no_svm)
    assert fresh.resumed_from is None and steps(fresh.run_id) == [1, 2, 3, 4]


def test_resume_auto_passes_over_a_run_whose_checkpoints_do_not_verify(tiny_no_svm, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        aqtrack.train(**tiny_no_svm, run_name="good", callbacks=[stop_at(3, KeyboardInterrupt())])
    with pytest.raises(KeyboardInterrupt):
        aqtrack.train(**tiny_no_svm, run_name="broken", callbacks=[stop_at(3, KeyboardInterrupt())])
    client = MlflowClient()
    ids = {r.info.run_name: r.info.run_id for r in client.search_runs(["1"])}
    for path in (Path(tiny_no_svm["output_dir"]) / ids["broken"] / "checkpoints").iterdir():
        path.write_bytes(b"x")  # its local copies, and its artifacts (the store's files), corrupted
    for path in Path("mlruns").rglob(f"{ids['broken']}/artifacts/checkpoints/*"):
        path.write_bytes(b"x")

    continued = aqtrack.train(resume="auto", **tiny_no_svm)

    assert continued.run_id == ids["good"] and steps(ids["good"]) == [1, 2, 3, 4]


# --- refused before anything is touched ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "-1"], "aqtrack: error: --lr must be > 0 (got -1.0)"),
        (["--resume", "a" * 32, "--rounds", "0"], "aqtrack: error: --rounds must be >= 1 (got 0)"),
        (["--fork", "a" * 32, "--fork-epoch", "2", "--batch-size", "0"], "aqtrack: error: --batch-size must"),
        (["--resume", "a" * 32, "--fork", "b" * 32], "aqtrack: error: pass --resume or --fork, not both"),
        (["--fork-epoch", "3"], "aqtrack: error: --fork-epoch needs --fork RUN_ID"),
    ],
)
def test_a_bad_flag_is_reported_with_the_tracking_server_down(capsys, monkeypatch, args, message):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def test_a_bad_data_file_is_refused_before_mlflow_is_imported_and_no_store_exists(tmp_path):
    tmp_path = tmp_path / "fresh"  # a directory with no store in it (conftest's is in tmp_path)
    tmp_path.mkdir()
    bad = tmp_path / "moves.csv"
    bad.write_text("sample_id,frame,label\n0,0,0\n")  # no channel columns
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # MLflow's default store
    code = (
        "import sys; from aqtrack.cli import main; code = main(['train', '--data', 'moves.csv']); "
        "print(code, 'mlflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False"], done.stderr[-3000:]
    assert done.stderr.strip().startswith("aqtrack: error: moves.csv: ")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "outputs").exists()


def test_trainings_started_at_the_same_moment_on_a_new_embedded_store_all_work(tiny_no_svm, tmp_path):
    store = tmp_path / "new" / "mlflow.db"
    store.parent.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    command = [sys.executable, "-m", "aqtrack", "train", *flags(tiny_no_svm)]
    processes = [subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE) for _ in range(3)]
    errors = [p.stderr.read().decode() for p in processes if p.wait(timeout=300) != 0]
    assert errors == []
    client = MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("action-quality").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3


# --- each run's local files in a folder of its own -----------------------------------------------------


def test_two_runs_sharing_an_output_dir_never_share_a_file(tiny_no_svm):
    a = aqtrack.train(**tiny_no_svm)
    b = aqtrack.train(**{**tiny_no_svm, "rounds": 1})
    out = Path(tiny_no_svm["output_dir"])
    assert sorted(p.name for p in out.iterdir()) == sorted([a.run_id, b.run_id])
    for result, epochs in ((a, 4), (b, 2)):
        report = json.loads((out / result.run_id / REPORT_FILE).read_text())
        assert result.report_path == out / result.run_id / REPORT_FILE
        assert report["run_id"] == result.run_id and report["current_epoch"] == epochs
        assert (out / result.run_id / "checkpoints" / LAST).is_file()
    assert not (out / REPORT_FILE).exists()


def test_tags_link_a_resume_under_mlflow_run_to_its_source(tiny_no_svm, monkeypatch):
    with pytest.raises(KeyboardInterrupt):
        aqtrack.train(**tiny_no_svm, callbacks=[stop_at(3, KeyboardInterrupt())])
    source = only_run_id()
    client = MlflowClient()
    made = client.create_run(client.get_run(source).info.experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", made)

    result = aqtrack.train(resume=source)

    assert result.run_id == made and result.resumed_from == source
    assert steps(made) == [1, 2, 3, 4] and steps(source) == [1, 2]
    assert client.get_run(made).data.tags[names.TAG_RESUMED_FROM] == source
    assert client.get_run(source).data.tags[names.TAG_CONTINUED_IN] == made
    files = {Path(f.path).name for f in client.list_artifacts(made, "checkpoints")}
    assert {LAST, BEST} <= files
