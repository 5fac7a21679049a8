"""Everything that talks to MLflow: the `Tracker` the loop logs to, run lifecycle and resume helpers.

This is the only module that imports mlflow, and it does so lazily, so `aqtrack --help` stays instant.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aqtrack.errors import ConfigError, ResumeError, TrackingError, TrackingLost, described, first_line
from aqtrack.names import (
    CHECKPOINT_EPOCH_TAG,
    METRIC_KEYS,
    MLFLOW_RUN_ENV,
    PARENT_RUN_TAG,
    TAG_CV,
    TAG_CV_FOLD,
    TAG_CV_PARENT,
    TAG_ERROR,
    TAG_HEARTBEAT,
    TAG_OWNER,
)
from aqtrack.tracking.lock import held_here, store_lock
from aqtrack.training.checkpoint import History

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
# Bounded defaults instead of MLflow's (retries for up to ~20 minutes); the MLflow env vars still win.
# No per-download progress bars either: they would interleave with the epoch lines.
MLFLOW_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

# A RUNNING run whose owner published nothing for this long is taken to be dead.
STALE_AFTER_S = 900
# While the server is unreachable: how often to look whether it is back, and how long one look waits.
PROBE_INTERVAL_S = 10.0
PROBE_TIMEOUT_S = 3.0


class MlflowTracker:
    """Logs to one MLflow run within a publishing budget, riding out a tracking server that stops
    answering.

    Calls are queued and sent by `flush()`: first the files (each checkpoint, then its manifest), then
    the metrics and tags in one `log_batch`, so the checkpoint-epoch tag moves only once its files
    are uploaded. Metrics logged without their checkpoint cannot happen; a checkpoint uploaded without
    its metrics is caught up on resume. The loop flushes every epoch, but a publish happens at most once
    every `interval` seconds (`--publish-interval`): the epochs in between go out together with the next
    one (each metric point at its own step; of a file rewritten every epoch, such as last.pt, only the
    newest version), and `drain()` (the end of training, before the finishing stage) or
    `flush(force=True)` (a stop) sends everything. MLflow's view of a run is so at most `interval`
    seconds plus one epoch behind; a resume on this machine publishes the newer local checkpoints first,
    one on another machine retrains the epochs since the last publish.

    `skip_logged` takes the (key, step) pairs the run already has (see `sync_history`). When a call fails
    for a reason that can pass (connection refused or timed out, a 5xx answer), training goes on: everything
    waits here (files stay on local disk, newest version of each name) and is sent once the server
    answers again, without the metric points it already took. After `patience` seconds without the
    server, `flush()` raises `TrackingLost`.
    """

    def __init__(
        self, client: MlflowClient, run_id: str, patience: float = 600, interval: float = 0.0
    ) -> None:
        self.client, self.run_id, self.patience = client, run_id, patience
        self.interval = interval  # the least seconds between two publishes (`flush` keeps the rest queued)
        self._published = -math.inf  # time.monotonic() of the last publish of metrics (an epoch's)
        self._held = False  # the budget kept queued epochs back since that publish
        self._skip: set[tuple[str, int]] = set()
        self._metrics: dict[tuple[str, int], float] = {}
        self._files: dict[tuple[str | None, str], Path] = {}  # (artifact dir, name) -> local file
        self._tags: dict[str, str] = {}
        self._offline_since: float | None = None
        self._last_try = 0.0
        self._staging: Path | None = None
        self._before_publish: list[Callable[[], None]] = []

    def before_publish(self, prepare: Callable[[], None]) -> None:
        """Call `prepare` whenever a flush is not held back by the budget (it sends, or, while the server
        is away, keeps everything for later): what is costly to make and only needed once published (the
        legacy report) is made then, and may queue files and metrics that go out with it."""
        self._before_publish.append(prepare)

    def skip_logged(self, points: set[tuple[str, int]]) -> None:
        """Never send these (key, step) points: the run has them already (a resumed history)."""
        self._skip |= points

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._metrics.update({(k, step): float(v) for k, v in metrics.items() if (k, step) not in self._skip})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._files.pop((artifact_path, path.name), None)  # re-queue at the end: the order is the point
        self._files[(artifact_path, path.name)] = path

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._tags.update({k: str(v) for k, v in tags.items()})
        self._tags[TAG_HEARTBEAT] = str(int(time.time()))

    def flush(self, force: bool = False) -> None:
        """Send what is queued, unless the last publish was under `interval` seconds ago (`force`: send
        anyway); keep it for later if the server is away (within the patience)."""
        now = time.monotonic()
        if not force and not self.offline and now - self._published < self.interval:
            self._held = True
            return  # the publishing budget: this epoch goes out with a later one
        for prepare in self._before_publish:
            prepare()  # also while the server is away: what it makes waits here with the rest
        if self.offline and (now - self._last_try < PROBE_INTERVAL_S or not self._server_answers()):
            self._check_patience(now)
            return
        epochs = bool(self._metrics)  # the budget counts publishes of epochs, not the run's set-up
        try:
            self._send()
        except Exception as e:
            if not is_transient(e):
                raise
            self._last_try = time.monotonic()
            if not self.offline:
                self._offline_since = self._last_try
                log.warning(
                    "tracking server unreachable (%s); training goes on, metrics and checkpoints are kept "
                    "locally and sent when it answers again (for up to %.0f s)",
                    first_line(e),
                    self.patience,
                )
            self._check_patience(self._last_try)
        else:
            if epochs:
                self._published, self._held = now, False
            if self.offline:
                log.warning("tracking server back after %.0f s: caught up", now - self._offline_since)
                self._offline_since = None

    def publish_held(self) -> None:
        """On a stop: send at once the epochs the budget held back (with whatever the stopped epoch had
        queued, its checkpoint written); one try, no waiting for an absent server. Without the budget
        holding anything back, a stop publishes nothing the loop had not flushed."""
        if self._held:
            self.flush(force=True)

    def drain(self) -> None:
        """Before the run is closed: wait, within the patience, until everything queued is sent."""
        self.flush(force=True)
        while self.offline:
            time.sleep(PROBE_INTERVAL_S)
            self.flush(force=True)
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    @property
    def offline(self) -> bool:
        return self._offline_since is not None

    def _send(self) -> None:
        from mlflow.entities import Metric, RunTag

        while self._files:
            (artifact_path, _), path = next(iter(self._files.items()))
            self.client.log_artifact(self.run_id, str(path), artifact_path)
            del self._files[(artifact_path, path.name)]
        if self.offline:  # a batch that failed may still have landed: never send a point twice
            for key in {k for k, _ in self._metrics}:
                for m in self.client.get_metric_history(self.run_id, key):
                    self._metrics.pop((key, m.step), None)
        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, step) for (k, step), v in self._metrics.items()]
        tags = [RunTag(k, v) for k, v in self._tags.items()]
        while metrics or tags:  # at most 1000 metrics per call; the few tags go with the last chunk
            chunk, metrics = metrics[:MAX_METRICS_PER_BATCH], metrics[MAX_METRICS_PER_BATCH:]
            tag_chunk, tags = (tags, []) if not metrics else ([], tags)
            self.client.log_batch(self.run_id, metrics=chunk, tags=tag_chunk)
            for m in chunk:
                del self._metrics[(m.key, m.step)]
        self._tags.clear()

    def _server_answers(self) -> bool:
        self._last_try = time.monotonic()
        return server_answers(self.client.tracking_uri)

    def _check_patience(self, now: float) -> None:
        waited = now - self._offline_since
        if waited >= self.patience:
            raise TrackingLost(
                f"tracking server {self.client.tracking_uri} unreachable for {waited:.0f} s "
                f"(patience {self.patience:g} s)"
            )

    def log_params(self, params: Mapping[str, Any]) -> None:
        log_params(self.client, self.run_id, params)

    def log_json(self, obj: Any, artifact_file: str) -> None:
        """Queue `obj` as a JSON artifact; the file lives in the tracker's own directory until sent."""
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="aqtrack-staging-"))
        path = self._staging / artifact_file
        path.write_text(json.dumps(obj, indent=2))
        self.log_artifact(path)


def server_answers(uri: str) -> bool:
    """One quick look (a single request, short timeout) at an HTTP tracking server; other stores
    have no server to look at. Any HTTP answer counts: only silence means it is down."""
    return _unreachable(uri) is None


def _unreachable(uri: str) -> str | None:
    """Why an HTTP tracking server does not answer one quick look, or None when it does."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S):
            return None
    except urllib.error.HTTPError:
        return None
    except TimeoutError:
        return f"no answer within {PROBE_TIMEOUT_S:g} s"
    except OSError as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
            return f"no answer within {PROBE_TIMEOUT_S:g} s"
        return f"not reachable ({getattr(reason, 'strerror', None) or reason})"


def is_transient(e: BaseException) -> bool:
    """A failure that may pass: no connection, a timeout, a 5xx answer (not a 4xx: that is our bug)."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):
        return e.get_http_status_code() >= 500
    if isinstance(e, requests.HTTPError):
        return e.response is None or e.response.status_code >= 500
    return isinstance(e, (requests.RequestException, ConnectionError, TimeoutError))


def connect(existing: bool = False) -> MlflowClient:
    """A client for MLFLOW_TRACKING_URI (or MLflow's embedded default), checked to answer now.

    `existing`: for a command that only reads runs (`runs`, `show`, `plot`, `predict`, `svm`, `report`),
    an embedded sqlite store must already be there; MLflow would otherwise create an empty one where
    the user happened to be. Raises ConfigError naming the file and what to do.
    """
    for key, value in MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import mlflow
    from mlflow import MlflowClient

    uri = mlflow.get_tracking_uri()
    path = _sqlite_path(uri)
    if existing and path is not None and not path.exists():
        raise ConfigError(
            f"no tracking store at {path.resolve()} ({uri}): nothing was tracked here yet; train a run "
            "first (aqtrack train), or run this where your mlflow.db is, or set MLFLOW_TRACKING_URI"
        )
    down = _unreachable(uri)  # one short look first: MLflow's own calls retry for much longer
    if down:
        raise TrackingError(
            f"cannot use tracking store {uri}: {down}; check MLFLOW_TRACKING_URI and that the server is up"
        )
    # An embedded store gets its schema on first contact; two processes doing that at once on a new
    # file can crash one (alembic's migration is not safe against itself), so first contacts queue.
    first_contact = store_lock(uri) if uri.startswith("sqlite:") else contextlib.nullcontext()
    with first_contact:
        client = MlflowClient(uri)
        try:
            client.search_experiments(max_results=1)
        except Exception as e:  # any failure here means the store is unusable; say which and why
            raise TrackingError(
                f"cannot use tracking store {uri}: {first_line(e)}; check MLFLOW_TRACKING_URI and the server"
            ) from e
    return client


def _sqlite_path(uri: str) -> Path | None:
    """The database file of an embedded sqlite tracking URI (`sqlite:///mlflow.db`: relative to the
    cwd; `sqlite:////abs/path.db`), None for any other store or an in-memory one."""
    if not uri.startswith("sqlite:///"):
        return None
    file = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(file) if file and file != ":memory:" else None


def find_experiment_id(client: MlflowClient, name: str) -> str | None:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else None


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created if it does not exist yet."""
    found = find_experiment_id(client, name)
    if found is not None:
        return found
    try:
        return client.create_experiment(name)
    except Exception:  # another process created it first
        found = find_experiment_id(client, name)
        if found is None:
            raise
        return found


def get_run(client: MlflowClient, run_id: str, label: str = "--resume"):
    """The (not deleted) run with `run_id`, or a ResumeError that starts with `label`."""
    from mlflow.exceptions import MlflowException

    if not RUN_ID_RE.match(run_id):
        raise ResumeError(f"{label} {run_id!r}: not a run id (32 lowercase hex characters)")
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise ResumeError(
            f"{label} {run_id}: no such run in {client.tracking_uri}: {first_line(e)}; "
            "check the run id (`aqtrack runs --all`) and MLFLOW_TRACKING_URI"
        ) from e
    if run.info.lifecycle_stage == "deleted":
        raise ResumeError(
            f"{label} {run_id}: the run is deleted; "
            f"restore it first with `mlflow runs restore --run-id {run_id}`"
        )
    return run


def unfinished_runs(client: MlflowClient, experiment_id: str | None) -> list:
    """The experiment's runs that did not finish and have a published checkpoint, newest first (the
    candidates of `--resume auto`)."""
    if experiment_id is None:
        return []
    return list(
        client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{CHECKPOINT_EPOCH_TAG}` != '' and attributes.status != 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1000,
        )
    )


def env_run(client: MlflowClient):
    """The run MLFLOW_RUN_ID names (`mlflow run` sets it for the run it made), or None when unset."""
    run_id = os.environ.get(MLFLOW_RUN_ENV, "")
    if not run_id:
        return None
    if not RUN_ID_RE.match(run_id):
        raise ConfigError(
            f"{MLFLOW_RUN_ENV}={run_id!r}: not a run id (32 lowercase hex characters); unset it"
        )
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise ConfigError(
            f"{MLFLOW_RUN_ENV}={run_id}: no such run in {client.tracking_uri} ({first_line(e)}); unset it"
        ) from e
    if run.info.lifecycle_stage == "deleted":
        raise ConfigError(f"{MLFLOW_RUN_ENV}={run_id}: the run is deleted; unset {MLFLOW_RUN_ENV}")
    return run


def holds_training(run) -> bool:
    """Whether the run holds (or held) an aqtrack training or cross-validation: metrics, a checkpoint,
    an owner or folds. A run `mlflow run` just made holds none, and is ours to train in."""
    tags = run.data.tags
    return bool(
        CHECKPOINT_EPOCH_TAG in tags
        or TAG_OWNER in tags
        or TAG_CV in tags
        or set(METRIC_KEYS) & set(run.data.metrics)
    )


def held_elsewhere(run, tracking_uri: str) -> str | None:
    """Why the run is being trained by a live process now, or None: the one rule `aqtrack runs`, resume
    and `--resume auto` share. On this machine the run lock says it (the kernel drops it when its
    process dies); a RUNNING run whose owner is another machine is taken to be alive while its last
    heartbeat (an epoch published) is under STALE_AFTER_S old."""
    if held_here(tracking_uri, run.info.run_id):
        return "trained by a process on this machine"
    return running_on_another_machine(run)


def running_on_another_machine(run) -> str | None:
    """The cross-machine half of `held_elsewhere` (for a caller that holds the run's lock itself)."""
    tags = run.data.tags
    host = tags.get(TAG_OWNER, "").rpartition(":")[0]
    if run.info.status != "RUNNING" or not host or host == socket.gethostname():
        return None
    heartbeat = tags.get(TAG_HEARTBEAT, "")
    quiet = time.time() - (float(heartbeat) if heartbeat.isdigit() else 0.0)
    if quiet < STALE_AFTER_S:
        return f"RUNNING on {host} (last epoch published {quiet:.0f} s ago)"
    return None


def create_run(client: MlflowClient, experiment_id: str, name: str | None) -> Any:
    """A new run. Without a name, MLflow makes one up ("bold-owl-123") from the global `random`,
    which training has seeded: every run with the same seed would get the same name, and the draw
    would move training's RNG. So the name gets fresh entropy, and training's state is put back."""
    state = random.getstate()
    random.seed()
    try:
        return client.create_run(experiment_id, run_name=name)
    finally:
        random.setstate(state)


def create_child_run(client: MlflowClient, parent, name: str, tags: Mapping[str, str]) -> str:
    """A new run nested under `parent` in the MLflow UI (same experiment, `mlflow.parentRunId`). Like
    `create_run`, it leaves the global `random` as it found it (a fold's training is seeded before)."""
    state = random.getstate()
    try:
        run = client.create_run(
            parent.info.experiment_id, run_name=name, tags={PARENT_RUN_TAG: parent.info.run_id, **tags}
        )
    finally:
        random.setstate(state)
    return run.info.run_id


def cv_folds(client: MlflowClient, parent) -> dict[int, Any]:
    """The fold runs of a CV parent by fold, found by their tags (never by name); deleted runs are not
    searched. Should a fold have two runs, the FINISHED one (else the newest) is the fold's."""
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{TAG_CV_PARENT}` = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=10000,
    )
    folds: dict[int, Any] = {}
    for run in runs:
        fold = int(run.data.tags.get(TAG_CV_FOLD, "0"))
        if fold not in folds or folds[fold].info.status != "FINISHED":
            folds[fold] = run
    return folds


def delete_run(client: MlflowClient, run_id: str) -> None:
    """MLflow's soft delete: the run leaves searches and the UI, and `mlflow runs restore` brings it back."""
    client.delete_run(run_id)


def newest_runs(client: MlflowClient, experiment_ids: list[str], max_results: int = 1000) -> list:
    """The experiments' runs (not deleted), newest first."""
    return list(
        client.search_runs(experiment_ids, order_by=["attributes.start_time DESC"], max_results=max_results)
    )


def artifact_tree(client: MlflowClient, run_id: str, directory: str | None = None) -> list[tuple[str, int]]:
    """(path, size in bytes; -1 for a directory) of every artifact of the run, depth first."""
    out: list[tuple[str, int]] = []
    for f in client.list_artifacts(run_id, directory):
        out.append((f.path, -1 if f.is_dir else (f.file_size or 0)))
        if f.is_dir:
            out += artifact_tree(client, run_id, f.path)
    return out


def artifact_names(client: MlflowClient, run_id: str, directory: str) -> set[str]:
    """Names of the files directly in the run's artifact `directory`."""
    return {f.path.rpartition("/")[2] for f in client.list_artifacts(run_id, directory) if not f.is_dir}


def download_or_refuse(client: MlflowClient, run_id: str, artifact: str, dst: Path) -> Path:
    """Download one artifact of the run into `dst` (a directory of ours, never a shared one); ResumeError
    when it cannot (missing, unreadable, the server gone)."""
    from mlflow.exceptions import MlflowException

    try:
        return Path(client.download_artifacts(run_id, artifact, str(dst)))
    except (MlflowException, OSError) as e:
        raise ResumeError(f"run {run_id}: could not download {artifact}: {first_line(e)}") from e


def download_if_present(client: MlflowClient, run_id: str, artifact: str, dst: Path) -> Path | None:
    """Download one artifact of the run into `dst`; None if the run does not have it."""
    parent, _, name = artifact.rpartition("/")
    if name not in artifact_names(client, run_id, parent or None):
        return None
    return download_or_refuse(client, run_id, artifact, dst)


def sync_history(client: MlflowClient, run_id: str, history: History) -> set[tuple[str, int]]:
    """Make the run's metrics match `history` (epochs 1..N) and return the (key, step) pairs it has.

    Points the run lacks (a run resumed into a new run, or logged by a process that died before
    logging) are logged from the checkpoint's measured history. Points it has past the checkpoint (a
    process that logged an epoch and died before checkpointing it) are returned, so the re-run of
    that epoch does not log them again: each key keeps exactly one point per epoch.
    """
    from mlflow.entities import Metric

    have: set[tuple[str, int]] = set()
    missing = []
    now = int(time.time() * 1000)
    for key, values in history.metrics.items():
        steps = {m.step for m in client.get_metric_history(run_id, key)}
        have |= {(key, s) for s in steps}
        missing += [
            Metric(key, v, now, step)
            for step, v in enumerate(values, 1)
            if step not in steps and v == v  # NaN: an epoch that did not measure this key
        ]
    for i in range(0, len(missing), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=missing[i : i + MAX_METRICS_PER_BATCH])
    if missing:
        log.info("run %s: logged %d metric points from the checkpoint's history", run_id, len(missing))
    return have


def fetch_history(client: MlflowClient, run_id: str, keys: tuple[str, ...]) -> dict[str, dict[int, float]]:
    """{key: {step: value}} of the run's metrics; the first point of a step wins."""
    out: dict[str, dict[int, float]] = {}
    for key in keys:
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        out[key] = {}
        for m in points:
            out[key].setdefault(m.step, m.value)
    return out


def metric_steps(client: MlflowClient, run_id: str, key: str) -> set[int]:
    return {m.step for m in client.get_metric_history(run_id, key)}


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """Log the params the run does not have yet (`mlflow run` logs its own, as the user typed them)."""
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    new = [Param(k, str(v)) for k, v in params.items() if k not in existing]
    for i in range(0, len(new), 100):  # MLflow's log_batch takes at most 100 params
        client.log_batch(run_id, params=new[i : i + 100])


def log_points(
    client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int, tags: Mapping[str, str]
) -> None:
    """One `log_batch` of metric points at `step` and tags, outside the epoch loop's tracker."""
    from mlflow.entities import Metric, RunTag

    stamp = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), stamp, step) for k, v in metrics.items()],
        tags=[RunTag(k, str(v)) for k, v in tags.items()],
    )


@contextlib.contextmanager
def terminating(client: MlflowClient, run_id: str, resume: str = "aqtrack train --resume") -> Iterator[None]:
    """Mark the run FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED (with the error as a tag) however the
    block ends. A run whose server was lost stays RUNNING: there is no one to tell, and resume accepts it.
    `resume`: the command that continues the run, for the message a stop prints.
    """
    try:
        yield
    except TrackingLost:
        raise
    except KeyboardInterrupt:
        _mark(client, run_id, "KILLED")
        log.warning("run %s stopped; continue it with `%s %s`", run_id, resume, run_id)
        raise
    except BaseException as e:
        _mark(client, run_id, "FAILED", {TAG_ERROR: described(e)[:5000]})
        raise
    else:
        client.set_terminated(run_id, "FINISHED")


@contextlib.contextmanager
def system_metrics(client: MlflowClient, run_id: str, enabled: bool) -> Iterator[None]:
    """With `enabled`, MLflow's system metrics monitor (CPU, memory, disk, network, GPU) samples in a
    thread and logs `system/...` metrics to the run until the block ends. Its sampling interval is
    MLflow's (10 s; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL changes it)."""
    if not enabled:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # resume_logging: a resumed run's system metrics continue after the steps it already has.
    monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=client.tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def _mark(client: MlflowClient, run_id: str, status: str, tags: Mapping[str, str] | None = None) -> None:
    """Best effort, on the way out of a failure: never hide the error that got us here."""
    try:
        for key, value in (tags or {}).items():
            client.set_tag(run_id, key, value)
        client.set_terminated(run_id, status)
    except Exception as e:
        log.warning("run %s: could not mark it %s: %s", run_id, status, first_line(e))
