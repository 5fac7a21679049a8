"""`aqtrack train --fork RUN_ID --fork-epoch N`: a new run from another run's checkpoint at epoch N, with
the source's measured history 1..N, any setting changed but the data and the network's shape, and the
source run left as it was."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

import aqtrack
from aqtrack import names
from aqtrack.cli import main
from aqtrack.errors import ConfigError, ResumeError
from aqtrack.names import BEST, LAST, LR, METRIC_KEYS
from aqtrack.training.checkpoint import periodic_name


def points(run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient()
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in METRIC_KEYS}


def checkpoint(run_id: str, name: str, tmp: Path) -> dict:
    path = MlflowClient().download_artifacts(run_id, f"checkpoints/{name}", str(tmp / run_id / name))
    return torch.load(path, weights_only=True)


@pytest.fixture
def source(tiny: dict) -> tuple[aqtrack.TrainResult, dict]:
    """A finished 4-epoch run with a checkpoint every epoch, and its settings."""
    settings = {**tiny, "checkpoint_interval": 1, "svm": False}
    return aqtrack.train(**settings), settings


def snapshot(run_id: str) -> tuple:
    run = MlflowClient().get_run(run_id)
    tags = {k: v for k, v in run.data.tags.items() if k != names.TAG_FORKS}
    return run.info.status, run.data.params, tags, points(run_id)


def test_a_fork_with_unchanged_settings_continues_exactly_as_its_source(source, tmp_path):
    run, _ = source
    fork = aqtrack.train(fork=run.run_id, fork_epoch=2)

    assert fork.run_id != run.run_id and fork.resumed_from == run.run_id
    assert points(fork.run_id) == points(run.run_id)  # 1..2 carried, bit-equal; 3..4 trained the same
    a, b = checkpoint(fork.run_id, LAST, tmp_path)["model"], checkpoint(run.run_id, LAST, tmp_path)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_fork_with_a_lower_lr_keeps_the_history_changes_what_follows_and_links_the_runs(source, tmp_path):
    run, _ = source
    before = snapshot(run.run_id)

    fork = aqtrack.train(fork=run.run_id, fork_epoch=2, lr=5e-4, max_grad_norm=0.5)

    mine, theirs = points(fork.run_id), points(run.run_id)
    for key in METRIC_KEYS:
        assert [s for s, _ in mine[key]] == [1, 2, 3, 4], key  # one point per epoch
        assert mine[key][:2] == theirs[key][:2], key  # the source's measured history, bit-equal
    assert dict(mine[LR])[3] == 5e-4  # the new peak lr, at the start of round 2
    assert dict(theirs[LR])[3] == 1e-3
    client = MlflowClient()
    tags, params = client.get_run(fork.run_id).data.tags, client.get_run(fork.run_id).data.params
    assert tags[names.TAG_FORKED_FROM] == f"{run.run_id}@2"
    assert params["lr"] == "0.0005" and params["max_grad_norm"] == "0.5"
    note = tags["mlflow.note.content"]
    assert f"**Forked** from run `{run.run_id}` at epoch 2 with " in note and "lr 0.001 → 0.0005" in note
    assert client.get_run(run.run_id).data.tags[names.TAG_FORKS] == f"{fork.run_id}@2"
    assert snapshot(run.run_id) == before  # the source is untouched
    first = checkpoint(fork.run_id, LAST, tmp_path)
    assert first["config"]["lr"] == 5e-4 and first["run_id"] == fork.run_id

    again = aqtrack.train(fork=run.run_id, fork_epoch=3, rounds=3)
    assert client.get_run(run.run_id).data.tags[names.TAG_FORKS] == (f"{fork.run_id}@2,{again.run_id}@3")
    assert [s for s, _ in points(again.run_id)["val_acc"]] == [1, 2, 3, 4, 5, 6]


def test_fork_from_the_command_line_and_the_runs_table_shows_the_lineage(source, capsys):
    run, _ = source
    assert main(["train", "--fork", run.run_id, "--fork-epoch", "3", "--lr", "0.0005", "-q"]) == 0
    table = aqtrack.runs_table().set_index("run_id")
    (fork_id,) = [i for i in table.index if i != run.run_id]
    assert table.loc[fork_id, "origin"] == f"fork of {run.run_id[:8]}@3"
    capsys.readouterr()
    assert main(["show", run.run_id]) == 0
    assert f"forks: {fork_id}@3" in capsys.readouterr().out


def test_a_fork_epoch_without_a_checkpoint_is_refused_listing_the_epochs_there_are(tiny):
    run = aqtrack.train(**{**tiny, "svm": False})  # checkpoints: periodic 2, 4; best; last 4
    with pytest.raises(ResumeError) as info:
        aqtrack.train(fork=run.run_id, fork_epoch=3)
    message = str(info.value)
    assert message.startswith(f"--fork {run.run_id}: --fork-epoch 3: no verified checkpoint there;")
    assert "checkpoints at epochs: " in message and "2 (periodic)" in message
    assert "4 (last/periodic)" in message
    with pytest.raises(ResumeError, match="pass --fork-epoch N; checkpoints at epochs: "):
        aqtrack.train(fork=run.run_id)
    assert len(aqtrack.runs_table()) == 1  # no run was created


@pytest.mark.parametrize(("setting", "value"), [("hidden", 16), ("n_train", 32), ("data_seed", 1)])
def test_a_fork_cannot_change_the_data_or_the_network_shape(source, setting, value):
    run, _ = source
    with pytest.raises(ConfigError, match="in a fork"):
        aqtrack.train(fork=run.run_id, fork_epoch=2, **{setting: value})
    assert len(aqtrack.runs_table()) == 1


def test_a_fork_whose_best_so_far_is_not_stored_starts_its_best_at_the_fork_epoch(source, tmp_path, caplog):
    run, settings = source
    client = MlflowClient()
    best = checkpoint(run.run_id, BEST, tmp_path)
    assert best["epoch"] == 1  # val_acc never improves after epoch 1 in this tiny run
    # Gone: the checkpoints of epoch 1 (the best file and the periodic one), locally and as artifacts.
    gone = {BEST, periodic_name(1, 1)}
    for root in (Path("mlruns"), Path(settings["output_dir"])):
        for path in root.rglob(f"{run.run_id}/**/*.pt*"):
            if any(path.name.startswith(name) for name in gone):
                path.unlink()

    with caplog.at_level(logging.WARNING, logger="aqtrack"):
        fork = aqtrack.train(fork=run.run_id, fork_epoch=3)

    assert "its best checkpoint up to epoch 3 (epoch 1, val_acc" in caplog.text
    assert fork.best_epoch >= 3
    carried = checkpoint(fork.run_id, BEST, tmp_path)
    assert carried["run_id"] == fork.run_id and carried["epoch"] >= 3
    assert {Path(f.path).name for f in client.list_artifacts(fork.run_id, "checkpoints")} >= {LAST, BEST}
