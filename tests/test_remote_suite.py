"""Against a real `mlflow server` on 127.0.0.1 (HTTP, artifacts proxied into the server's own directory),
once with a sqlite store and once with a throwaway PostgreSQL database behind it: training, a SIGKILL
and a resume by run id, and the legacy report behave exactly as on the embedded sqlite store. And against
`mlflow server --app-name basic-auth`, training authenticates with MLFLOW_TRACKING_USERNAME/PASSWORD."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow_server
import pytest
import torch
from crashes import flags, run_aqtrack
from mlflow import MlflowClient
from mlflow.server import get_app_client
from mlflow_server import BACKENDS, MlflowServer, PostgresCluster, PostgresMissing, serve
from test_kill_anywhere import EPOCHS, SETTINGS, outcome

import aqtrack as aq
from aqtrack import cli
from aqtrack.names import ARTIFACT_DIR, BEST, LAST, MANIFEST_SUFFIX, METRIC_KEYS, REPORT_FILE

VOLATILE = ("timestamp", "run_id")  # the only report keys that differ between two runs of one config


@pytest.fixture(scope="module", autouse=True)
def restore_aqtrack_logger_after_module() -> Iterator[None]:
    """`cli.main` points the aqtrack logger at stderr, away from caplog; undo that after the module."""
    logger = logging.getLogger("aqtrack")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@dataclass
class Reference:
    root: Path
    process: subprocess.Popen


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> Iterator[Reference]:
    """The same config trained uninterrupted on an embedded sqlite store, in a process of its own like the
    killed one; started before the first server (which asks for it) so that the two start side by side."""
    root = tmp_path_factory.mktemp("reference")
    shutil.copyfile(empty_store, root / "mlflow.db")
    command = [sys.executable, "-m", "aqtrack", "train", *flags({**SETTINGS, "output_dir": root / "out"})]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    with open(root / "train.log", "w") as log:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield Reference(root, process)
    finally:
        if process.poll() is None:  # a test failed before waiting for it
            process.kill()
            process.wait()


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, empty_store: Path, reference_run
) -> Iterator[MlflowServer]:
    """`mlflow server` with `--serve-artifacts`, its store a sqlite file or a PostgreSQL cluster."""
    try:
        with serve(request.param, tmp_path_factory.mktemp(f"server-{request.param}"), empty_store) as server:
            yield server
    except PostgresMissing as e:
        pytest.fail(str(e), pytrace=False)


def run_of(client: MlflowClient, experiment: str) -> str:
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run.info.run_id


def rebuilt_report(run_id: str, directory: Path) -> dict:
    """`aqtrack report RUN_ID -o DIR`, through the CLI, against the current tracking URI."""
    assert cli.main(["report", run_id, "-o", str(directory)]) == 0
    return without_volatile(json.loads((directory / REPORT_FILE).read_text()))


def without_volatile(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in VOLATILE}


def checkpoint_names(client: MlflowClient, run_id: str) -> set[str]:
    return {Path(f.path).name for f in client.list_artifacts(run_id, ARTIFACT_DIR)}


@pytest.fixture(scope="module")
def reference(reference_run: Reference) -> dict:
    """What the uninterrupted run on the embedded store ended with."""
    root = reference_run.root
    assert reference_run.process.wait(timeout=300) == 0, (root / "train.log").read_text()[-3000:]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        client = MlflowClient()
        run_id = run_of(client, "action-quality")
        points, weights, report = outcome(run_id, root / "out", root)
        return {
            "points": points,
            "weights": weights,
            "report": report,
            "rebuilt": rebuilt_report(run_id, root / "rebuilt"),
            "checkpoints": checkpoint_names(client, run_id),
        }


def test_killed_mid_upload_then_resumed_by_id_ends_as_on_the_embedded_store(
    server, reference, monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    # SIGKILLed halfway through uploading epoch 3's last.pt: the server holds a truncated file
    settings = {**SETTINGS, "output_dir": tmp_path / "out0", "experiment": "kill-resume"}
    done = run_aqtrack(tmp_path, "train", *flags(settings), kill_at="upload-last:3")
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    client = MlflowClient()
    run_id = run_of(client, "kill-resume")
    assert client.get_run(run_id).info.status == "RUNNING"

    # another machine, as it were: a fresh output dir, so only the server's artifacts can help
    assert cli.main(["train", "--resume", run_id, "--output-dir", str(tmp_path / "out1")]) == 0
    assert "last.pt: refused" in capsys.readouterr().err  # the truncated upload was caught by its manifest

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    points, weights, report = outcome(run_id, tmp_path / "out1", tmp_path)
    for key in METRIC_KEYS:
        assert [step for step, _ in points[key]] == list(range(1, EPOCHS + 1)), key
    assert points == reference["points"]
    assert weights.keys() == reference["weights"].keys()
    assert all(torch.equal(weights[k], reference["weights"][k]) for k in weights)
    assert report == reference["report"]

    names = checkpoint_names(client, run_id)
    assert names == reference["checkpoints"]
    assert {LAST, BEST, LAST + MANIFEST_SUFFIX, BEST + MANIFEST_SUFFIX} <= names
    assert any(n.startswith("action_quality_round_2_") for n in names)
    # proxied: the bytes are in the server's artifact directory, not anywhere the client wrote
    stored = server.artifacts.glob(f"*/{run_id}/artifacts/{ARTIFACT_DIR}/{LAST}")
    assert [p.read_bytes() for p in stored] == [
        (tmp_path / "out1" / run_id / "checkpoints" / LAST).read_bytes()
    ]

    assert rebuilt_report(run_id, tmp_path / "rebuilt") == reference["rebuilt"]


def test_train_then_resume_in_process_keeps_one_point_per_epoch_and_proxied_checkpoints(
    server, monkeypatch, tiny, tmp_path
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    first = aq.train(**{**tiny, "rounds": 1, "experiment": "in-process"})
    resumed = aq.train(resume=first.run_id, rounds=2)

    client = MlflowClient(server.url)
    assert resumed.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert client.get_run(first.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    for key in METRIC_KEYS:
        assert [m.step for m in client.get_metric_history(first.run_id, key)] == [1, 2, 3, 4], key
    assert {LAST, BEST, "action_quality_round_2_epoch_2.pt"} <= checkpoint_names(client, first.run_id)
    report = json.loads(aq.rebuild_report(first.run_id, tmp_path / "report").read_text())
    assert report["current_epoch"] == 4 and len(report["control_losses"]) == 4


ADMIN_PASSWORD, TRAINER_PASSWORD = "admin-password-for-tests", "trainer-password-for-tests"
# The README's basic_auth.ini, its user store in sqlite. Without the credential cache every request checks
# the password's PBKDF2 hash: the test's training took 3x as long.
AUTH_CONFIG = """[mlflow]
default_permission = READ
database_uri = sqlite:///{database}
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
"""


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> Iterator[MlflowServer]:
    """`mlflow server --app-name basic-auth`: its admin is created at first start from the env var; its
    user store is a sqlite file in the server's directory (basic_auth.ini's default, in its cwd)."""
    if importlib.util.find_spec("flask_wtf") is None:
        pytest.fail(
            "the basic-auth server needs Flask-WTF (mlflow[auth]): pip install -e '.[test]'", pytrace=False
        )
    root = tmp_path_factory.mktemp("server-auth")
    (root / "basic_auth.ini").write_text(AUTH_CONFIG.format(database=root / "basic_auth.db"))
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "tests-only",
    }
    with serve("sqlite", root, empty_store, args=("--app-name", "basic-auth"), env=env) as server:
        yield server


def test_training_against_a_basic_auth_server_uses_the_credentials_from_the_environment(
    auth_server, monkeypatch, tiny, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", auth_server.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    admin = get_app_client("basic-auth", tracking_uri=auth_server.url)
    admin.create_user("trainer", TRAINER_PASSWORD)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "trainer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    assert cli.main(["train", *flags(tiny)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("aqtrack: error: ") and "401" in error, error

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", TRAINER_PASSWORD)
    result = aq.train(**tiny)
    client = MlflowClient(auth_server.url)
    assert client.get_run(result.run_id).info.status == "FINISHED"
    experiment_id = client.get_run(result.run_id).info.experiment_id
    for key in METRIC_KEYS:
        assert [m.step for m in client.get_metric_history(result.run_id, key)] == [1, 2, 3, 4], key
    assert LAST in checkpoint_names(client, result.run_id)
    # the run's experiment was created as `trainer`, who therefore manages it
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    permission = admin.get_user_permission("trainer", "experiment", experiment_id)
    assert permission.permission == "MANAGE"


def test_without_postgresql_installed_the_suite_fails_saying_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(mlflow_server, "DEBIAN_INITDB", str(tmp_path / "*" / "bin" / "initdb"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PostgresMissing, match=r"^PostgreSQL not found .*run `bash scripts/system-deps.sh`"):
        PostgresCluster()


def test_a_server_that_fails_to_start_leaves_no_database_cluster_behind(monkeypatch, tmp_path):
    clusters: list[PostgresCluster] = []
    start = PostgresCluster.start

    def recording_start(self: PostgresCluster) -> PostgresCluster:
        clusters.append(self)
        return start(self)

    def failing_start(self: MlflowServer, timeout: float = 0) -> MlflowServer:
        raise RuntimeError("mlflow server exited with 1")

    monkeypatch.setattr(PostgresCluster, "start", recording_start)
    monkeypatch.setattr(MlflowServer, "start", failing_start)

    with pytest.raises(RuntimeError, match="mlflow server exited"), serve("postgresql", tmp_path):
        pass

    (cluster,) = clusters
    assert not cluster.root.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", cluster.port), timeout=2)
