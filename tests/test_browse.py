"""`aqtrack runs` / `aqtrack show` and their Python twins, on a real store with finished, killed and
failed runs."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from crashes import stop_at
from mlflow import MlflowClient
from stores import own_store

import aqtrack
from aqtrack import names
from aqtrack.cli import main
from aqtrack.names import METRIC_KEYS
from aqtrack.tracking import store
from aqtrack.tracking.lock import run_lock


class Boom(Exception):
    pass


def three_runs(tiny: dict) -> dict[str, str]:
    """A finished run (4 epochs), a killed one and a failed one (2 of 4 published), newest last."""
    finished = aqtrack.train(
        **{**tiny, "svm": True, "log_model": True}, run_name="done"
    ).run_id  # `show` lists both models
    with pytest.raises(KeyboardInterrupt):
        aqtrack.train(**tiny, run_name="stopped", callbacks=[stop_at(3, KeyboardInterrupt())])
    with pytest.raises(Boom):
        aqtrack.train(**tiny, run_name="broken", callbacks=[stop_at(3, Boom("disk on fire"))])
    by_name = {r.info.run_name: r.info.run_id for r in MlflowClient().search_runs(["1"])}
    return {"finished": finished, "killed": by_name["stopped"], "failed": by_name["broken"]}


@pytest.fixture(scope="module")
def shared_runs(
    tiny_settings: dict, empty_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, dict[str, str]]:
    """The three runs, trained once for the module in a store of its own: (store, run ids)."""
    root = tmp_path_factory.mktemp("runs")
    with own_store(root, empty_store) as uri:
        return uri, three_runs({**tiny_settings, "output_dir": str(root / "outputs")})


@pytest.fixture
def runs(shared_runs: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The module's three runs, for a test that only reads them; their store is the test's."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_runs[0])
    return shared_runs[1]


@pytest.fixture
def own_runs(tiny: dict) -> dict[str, str]:
    """The three runs, trained in the test's own store: for a test that changes them."""
    return three_runs(tiny)


def test_runs_table_has_status_progress_best_and_resumability_per_run(runs):
    table = aqtrack.runs_table().set_index("name")
    assert list(table.index) == ["broken", "stopped", "done"]  # newest first
    assert list(table["status"]) == ["FAILED", "KILLED", "FINISHED"]
    assert list(table["epochs"]) == [2, 2, 4] and list(table["total_epochs"]) == [4, 4, 4]
    assert list(table["resumable"]) == [
        "yes, from epoch 2",
        "yes, from epoch 2",
        "finished; --rounds to extend",
    ]
    history = MlflowClient().get_metric_history(runs["finished"], "val_acc")
    best = max(m.value for m in history)
    assert table.loc["done", "best_val_acc"] == best
    assert table.loc["done", "best_epoch"] == min(m.step for m in history if m.value == best)
    last_lr = max(MlflowClient().get_metric_history(runs["finished"], "lr"), key=lambda m: m.step).value
    assert table.loc["done", "lr"] == last_lr
    assert table.loc["done", "run_id"] == runs["finished"]


def test_runs_command_prints_one_line_per_run(runs, capsys):
    assert main(["runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:8] == [
        "run_id",
        "name",
        "status",
        "epochs",
        "best",
        "(epoch)",
        "test_acc",
        "test_bal_acc",
    ]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(runs.values())
    assert re.search(
        r" done +FINISHED +4/4 +val_acc \d\.\d{4} \(\d\)( +\d\.\d{4}){3} +\d+\.\d{4} +\d\.\d\de-\d\d "
        r"+finished; --rounds",
        rows[runs["finished"]],
    )
    assert re.search(r" stopped +KILLED +2/4 .* yes, from epoch 2 ", rows[runs["killed"]])
    assert re.search(r" broken +FAILED +2/4 .* yes, from epoch 2 ", rows[runs["failed"]])


def test_a_run_a_live_process_holds_is_not_offered_for_resume(own_runs, mlflow_store):
    client = MlflowClient()
    client.update_run(own_runs["failed"], status="RUNNING")  # as if a process trained it now
    table = aqtrack.runs_table().set_index("run_id")
    assert table.loc[own_runs["failed"], "resumable"] == "yes, from epoch 2"  # this machine: no lock, dead

    with run_lock(mlflow_store, own_runs["failed"]):  # what a live training on this machine holds
        table = aqtrack.runs_table().set_index("run_id")
    assert table.loc[own_runs["failed"], "resumable"] == "not now: trained by a process on this machine"

    client.set_tag(own_runs["killed"], names.TAG_OWNER, "another-machine:4242")
    client.set_tag(own_runs["killed"], names.TAG_HEARTBEAT, str(int(time.time()) - 60))
    client.update_run(own_runs["killed"], status="RUNNING")
    table = aqtrack.runs_table().set_index("run_id")
    assert re.fullmatch(
        r"not now: RUNNING on another-machine \(last epoch published 6\d s ago\)",
        table.loc[own_runs["killed"], "resumable"],
    )


def test_runs_of_all_experiments_name_their_experiment(tiny, capsys):
    aqtrack.train(**tiny, experiment="other")
    aqtrack.train(**tiny)
    assert main(["runs", "--all"]) == 0
    out = capsys.readouterr().out
    assert " other " in out and " action-quality " in out and len(out.splitlines()) == 3
    assert main(["runs", "--experiment", "other"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_show_prints_summary_params_history_tail_and_artifact_tree(runs, capsys):
    run_id = runs["finished"]
    assert main(["show", run_id, "--tail", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"run {run_id} 'done' in experiment 'action-quality'\nstatus FINISHED")
    assert "epochs 4/4, best epoch " in out and " by val_acc (0." in out and ", test_acc 0." in out
    assert "resumable: finished; --rounds to extend" in out
    assert "aqtrack.data_source=synthetic" in out and "epochs_per_round=2" in out
    history = out[out.index("last 2 of 4 epochs:") :].splitlines()
    assert history[1].split() == ["epoch", *METRIC_KEYS]
    assert [line.split()[0] for line in history[2:4]] == ["3", "4"]
    val_acc = {m.step: m.value for m in MlflowClient().get_metric_history(run_id, "val_acc")}
    assert float(history[3].split()[4]) == pytest.approx(val_acc[4], abs=5e-5)
    tree = out[out.index("artifacts:") :].splitlines()
    assert "  checkpoints/" in tree
    last = next(line for line in tree if line.strip().startswith("last.pt "))
    assert last.startswith("    last.pt  ") and last.endswith(" KB")  # inside checkpoints/, with its size
    assert any(line.startswith("  experiment_report.json  ") for line in tree)
    models = out[out.index("models (") :].splitlines()[1:]
    assert [line.split()[0] for line in models] == ["model", "svm"]  # the finishing stage's two
    assert all(line.split()[2:] == ["READY", "best", "epoch", models[0].split()[-1]] for line in models)


def test_show_lists_no_models_for_a_run_that_never_finished(runs, capsys):
    assert main(["show", runs["killed"]]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(
        "models (mlflow.pyfunc.load_model('runs:/<run id>/<name>') loads the newest READY one):\n  none"
    )


def test_show_of_a_failed_run_names_its_error(runs, capsys):
    assert main(["show", runs["failed"]]) == 0
    out = capsys.readouterr().out
    assert "status FAILED" in out and "aqtrack.error=Boom: disk on fire" in out
    assert "last 2 of 2 epochs:" in out


class CountingClient:
    """A real MlflowClient that notes the name of every method called on it."""

    def __init__(self, client: MlflowClient, calls: list[str]) -> None:
        self._client, self._calls = client, calls

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self._calls.append(name)
            return attr(*args, **kwargs)

        return counted


@pytest.mark.parametrize(
    ("argv", "message", "store_calls"),
    [
        (
            ["runs", "--experiment", "nope"],
            "--experiment 'nope': no such experiment in sqlite:",
            ["connect", "get_experiment_by_name", "search_experiments"],  # the second lists the known ones
        ),
        (
            ["show", "not-a-run"],
            "show 'not-a-run': not a run id (32 lowercase hex characters)",
            ["connect"],
        ),
        (["show", "0" * 32], f"show {'0' * 32}: no such run in sqlite:", ["connect", "get_run"]),
        (["show", "0" * 32, "--tail", "0"], "show: --tail must be >= 1 (got 0)", []),
        (["runs", "--all", "--experiment", "x"], "runs: pass --experiment NAME or --all, not both", []),
    ],
)
def test_bad_browse_input_is_one_error_line_after_at_most_one_lookup(
    argv, message, store_calls, capsys, monkeypatch
):
    """Refused on the first answer: no lookup is repeated, and flags that are wrong by themselves are
    refused before the store is opened."""
    calls: list[str] = []
    connect = store.connect

    def counting_connect(**kwargs):
        calls.append("connect")
        return CountingClient(connect(**kwargs), calls)

    monkeypatch.setattr(store, "connect", counting_connect)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"aqtrack: error: {message}"), err
    assert calls == store_calls


@pytest.mark.parametrize(
    "argv",
    [
        ["runs"],
        ["show", "0" * 32],
        ["plot", "0" * 32, "-o", "curves.png"],
        ["svm", "0" * 32],
        ["report", "0" * 32, "-o", "out"],
        ["predict", "0" * 32, "new.csv"],
    ],
    ids=lambda argv: argv[0],
)
def test_reading_commands_where_no_store_is_say_so_and_create_none(argv, tmp_path, monkeypatch, capsys):
    """A command that only reads runs, run where nothing was tracked: one error line naming the store
    file and what to do, exit 2, and no empty mlflow.db left behind (MLflow would create one)."""
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    monkeypatch.chdir(empty)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")  # the embedded default, here
    (empty / "new.csv").write_text("sample_id,frame,angle\n0,1,0.5\n")

    assert main(argv) == 2

    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        f"aqtrack: error: no tracking store at {empty / 'mlflow.db'} (sqlite:///mlflow.db)"
    )
    assert "train a run first" in line and len(line) < 300
    assert sorted(p.name for p in empty.iterdir()) == ["new.csv"]


def test_runs_without_experiment_names_the_default_it_looked_for(capsys):
    assert main(["runs"]) == 2  # the test's store holds only MLflow's Default experiment
    line = capsys.readouterr().err.strip()
    assert line.startswith("aqtrack: error: experiment 'action-quality' (the default): no such experiment in")
    assert "(experiments: Default); check the name, or pass --all" in line
