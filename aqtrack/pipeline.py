"""The public Python API: `train` (new or resumed run) and `rebuild_report`. The CLI calls these.

Everything that can be refused (settings, data, the run to resume, its checkpoint) is checked before
any run is created or touched, so bad input never leaves a half-made run behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from aqtrack import distributed, exports, tracking
from aqtrack.alerts import gradient_alerts
from aqtrack.checkpoint import (
    ARTIFACT_DIR,
    BEST,
    CHECKPOINT_EPOCH_TAG,
    LAST,
    MANIFEST_SUFFIX,
    History,
    Manifest,
    TrainState,
    manifest_path,
    verify_checkpoint,
)
from aqtrack.config import Config, flag, resumed, show
from aqtrack.data import ActionQualityData, load_configured
from aqtrack.describe import GENERATED_NAME_RE, NOTE_TAG, RUN_NAME_TAG, final_note, run_name, start_note
from aqtrack.distributed import World
from aqtrack.errors import ConfigError, DistributedError, ResumeError, TrackingLost
from aqtrack.finish import Finishing, curves_refresher, finish_run
from aqtrack.interrupts import ignored_signals, stop_signals
from aqtrack.lock import run_lock
from aqtrack.loop import EpochHook, Trainer, build_trainer, fit, restore
from aqtrack.metrics import METRIC_KEYS
from aqtrack.progress import Progress
from aqtrack.report import REPORT_FILE, build_report, history_from_points, report_writer, write_report
from aqtrack.resume import Found, find_checkpoint

log = logging.getLogger(__name__)

AUTO = "auto"
MLFLOW_RUN_ENV = "MLFLOW_RUN_ID"  # set by `mlflow run` for the run it created
# A RUNNING run whose owner on another machine published nothing for this long is taken to be dead.
STALE_AFTER_S = tracking.STALE_AFTER_S


@dataclass
class TrainResult:
    run_id: str
    epochs: int
    best_val_acc: float
    best_epoch: int
    history: History
    report_path: Path
    resumed_from: str | None


@dataclass
class _Start:
    """A validated plan: what to train, from which state, into which run."""

    config: Config
    data: ActionQualityData
    trainer: Trainer
    state: TrainState
    source_run: str | None  # the run whose checkpoint we resume, if any
    found: Found | None  # that checkpoint
    rename: str = ""  # a name to give the run once it is open (a generated one made readable)


def train(
    resume: str | None = None,
    *,
    defaults_unset: bool = False,
    callbacks: Iterable[EpochHook] = (),
    **settings: Any,
) -> TrainResult:
    """Train a new run, or resume one by id (or "auto": the newest unfinished run of the experiment).

    `settings` are Config fields by name, e.g. `train(rounds=1, epochs_per_round=5)`. When resuming,
    the run's own settings apply and only `config.RESUMABLE` ones (rounds, ...) may change;
    `defaults_unset` treats settings equal to their defaults as not given (what `mlflow run` needs).
    `callbacks` are called with the training state at the end of each epoch, once its checkpoint is
    written, just before the epoch is sent to MLflow.

    Under torchrun, rank 0 does all of this (callbacks included) and the other ranks follow it.
    """
    with distributed.joined() as world:
        if not world.is_main:
            return _follow(world)
        try:
            return _lead(world, resume, defaults_unset, callbacks, settings)
        except BaseException as e:
            world.refuse(e)  # the other ranks, still waiting for a plan, stop too
            raise


@dataclass
class _Plan:
    """What rank 0 tells the other ranks once the run is open: where and from which state to train."""

    run_id: str
    state: TrainState
    source_run: str | None


def _lead(
    world: World, resume: str | None, defaults_unset: bool, callbacks: Iterable[EpochHook], settings: dict
) -> TrainResult:
    """Check everything, open the run, tell the other ranks (if any), train and record."""
    client = tracking.connect()
    env_run = os.environ.get(MLFLOW_RUN_ENV) or None
    if resume == AUTO:
        resume = _newest_unfinished(client, env_run, settings)
    with tempfile.TemporaryDirectory(prefix="aqtrack-resume-") as tmp, contextlib.ExitStack() as held:
        run = tracking.get_run(client, resume) if resume else None  # checks the id before any use
        if run:  # before its checkpoint is read: a second resumer must not even download it
            held.enter_context(run_lock(client.tracking_uri, run.info.run_id))
        start = _prepare(client, run, settings, defaults_unset, Path(tmp), world)
        run_id = _open_run(client, start, env_run)
        if run_id != resume:
            held.enter_context(run_lock(client.tracking_uri, run_id))
        world.share_plan(_Plan(run_id, start.state, start.source_run))
        with (
            stop_signals(),
            tracking.terminating(client, run_id),
            tracking.system_metrics(client, run_id, start.config.run.system_metrics),
        ):
            trainer = start.trainer
            trainer.net = distributed.wrap(trainer.model, trainer.device, world)
            return _train_in_run(client, run_id, start, callbacks)


def _follow(world: World) -> TrainResult:
    """Ranks 1..N-1 under torchrun: train rank 0's plan, their share of each batch, recording nothing.
    Rank 0 alone decides when to stop: these ignore Ctrl-C and SIGTERM, and stop when it is gone."""
    logging.getLogger("aqtrack").setLevel(logging.WARNING)  # one progress line per epoch: rank 0's
    plan = world.await_plan()
    state = plan.state
    cfg = Config.from_dict(state.config)
    device = distributed.resolve_device(cfg.train.device, world)
    trainer = build_trainer(cfg, load_configured(cfg.data), device, world)
    if state.model:
        restore(trainer, state)
    with ignored_signals():
        trainer.net = distributed.wrap(trainer.model, device, world)
        try:
            fit(trainer, state, tracking.NullTracker(), None)
        except RuntimeError as e:
            if not distributed.lost_peer(e):
                raise
            raise DistributedError(
                f"rank {world.rank}: lost the other processes in epoch {state.epoch + 1}; rank 0's output "
                "says why it stopped"
            ) from e
    return TrainResult(
        run_id=plan.run_id,
        epochs=state.epoch,
        best_val_acc=state.best_val_acc,
        best_epoch=state.best_epoch,
        history=state.history,
        report_path=Path(cfg.run.output_dir) / REPORT_FILE,
        resumed_from=plan.source_run,
    )


def _newest_unfinished(client, env_run: str | None, settings: dict[str, Any]) -> str | None:
    # Under `mlflow run`, the experiment is the one MLflow put its run in.
    experiment_id = (
        client.get_run(env_run).info.experiment_id
        if env_run
        else tracking.find_experiment_id(client, settings.get("experiment", Config().run.experiment))
    )
    resume = tracking.latest_unfinished_run(client, experiment_id, exclude=env_run)
    log.info("--resume auto: %s", f"continuing run {resume}" if resume else "no unfinished run: a new one")
    return resume


def _prepare(
    client, run, settings: dict[str, Any], defaults_unset: bool, tmp: Path, world: World = distributed.SINGLE
) -> _Start:
    """Check everything and build the trainer; `run` is the run to resume, if any."""
    found = resume = None
    if run:
        resume = run.info.run_id
        _check_experiment(client, run, settings, defaults_unset)
        _check_not_running_elsewhere(run)
        local = checkpoint_dir(_given(run, "output_dir", settings, defaults_unset), resume)
        found = find_checkpoint(client, resume, local, tmp)
        state = found.state
        cfg = resumed(Config.from_dict(state.config), settings, defaults_unset=defaults_unset)
        if cfg.train.total_epochs <= state.epoch and run.info.status == "FINISHED":
            raise ResumeError(
                f"--resume {resume}: the run has trained {state.epoch} of {cfg.train.total_epochs} epochs "
                f"({run.info.status}); pass {flag('rounds')} above {cfg.train.rounds} to train longer"
            )
        _say_what_is_rerun(run, state.epoch)
        state.config = cfg.to_dict()
    else:
        cfg = Config.from_dict(settings)
        state = None
    _check_writable(Path(cfg.run.output_dir))
    data = load_configured(cfg.data)
    trainer = build_trainer(cfg, data, distributed.resolve_device(cfg.train.device, world), world)
    if state is None:
        state = TrainState(config=cfg.to_dict(), model_spec=trainer.spec.to_dict())
    else:
        restore(trainer, state)
    return _Start(cfg, data, trainer, state, resume, found)


def _given(run, name: str, settings: dict[str, Any], defaults_unset: bool) -> str:
    """A setting as this resume will use it: typed now, else the run's param, else the default."""
    if _typed(settings, name, defaults_unset):
        return settings[name]
    return run.data.params.get(name) or getattr(Config().run, name)


def _typed(settings: dict[str, Any], name: str, defaults_unset: bool) -> bool:
    """Whether the user gave this setting (under `mlflow run`, a default value counts as not given)."""
    return name in settings and not (defaults_unset and settings[name] == Config().to_dict()[name])


def _check_experiment(client, run, settings: dict[str, Any], defaults_unset: bool) -> None:
    """A run id from another experiment than the one asked for is a mistake, not a wish to move it."""
    env_run = os.environ.get(MLFLOW_RUN_ENV)
    if env_run:  # under `mlflow run`, the experiment is the one MLflow's run is in
        wanted = client.get_experiment(client.get_run(env_run).info.experiment_id).name
    elif _typed(settings, "experiment", defaults_unset):
        wanted = settings["experiment"]
    else:
        return
    actual = client.get_experiment(run.info.experiment_id).name
    if actual != wanted:
        raise ResumeError(
            f"--resume {run.info.run_id}: the run is in experiment {actual!r}, not {wanted!r}; "
            "resume it in its own experiment, or check the run id"
        )


def _check_not_running_elsewhere(run) -> None:
    """The lock covers this machine; a RUNNING run whose owner on another machine showed signs of life
    recently is taken to be training still."""
    tags, run_id = run.data.tags, run.info.run_id
    host = tags.get(tracking.TAG_OWNER, "").rpartition(":")[0]
    if run.info.status != "RUNNING" or not host or host == socket.gethostname():
        return
    heartbeat = tags.get(tracking.TAG_HEARTBEAT, "")
    quiet = time.time() - (float(heartbeat) if heartbeat.isdigit() else 0.0)
    if quiet < STALE_AFTER_S:
        raise ResumeError(
            f"--resume {run_id}: the run is RUNNING on {host} (last epoch published {quiet:.0f} s ago); if "
            f"that process is gone, mark the run KILLED (MlflowClient().set_terminated('{run_id}', "
            f"'KILLED')) or wait {STALE_AFTER_S - quiet:.0f} s"
        )


def _say_what_is_rerun(run, epoch: int) -> None:
    published = int(run.data.tags.get(CHECKPOINT_EPOCH_TAG, epoch))
    if published > epoch:
        log.warning(
            "run %s: resuming from epoch %d; epochs %d-%d are trained again (their metrics are kept)",
            run.info.run_id,
            epoch,
            epoch + 1,
            published,
        )


def _open_run(client, start: _Start, env_run: str | None) -> str:
    """The run to train in: the resumed run itself, the run `mlflow run` made, or a new one."""
    source, name = start.source_run, start.config.run.run_name
    if source and env_run in (None, source):
        client.update_run(source, status="RUNNING", name=name or None)
        return source
    if env_run:  # MLflow named it: the user's --run-name, or a generated name we make readable
        start.rename = name or _readable(start.config, client.get_run(env_run).info.run_name)
        return env_run
    experiment_id = tracking.experiment_id(client, start.config.run.experiment)
    run = tracking.create_run(client, experiment_id, name or None)
    start.rename = "" if name else _readable(start.config, run.info.run_name)
    return run.info.run_id


def _readable(cfg: Config, name: str) -> str:
    """MLflow's generated name ("bold-owl-123") prefixed with what the run is; other names kept."""
    return run_name(cfg, name) if GENERATED_NAME_RE.match(name or "") else ""


def _train_in_run(client, run_id: str, start: _Start, callbacks: Iterable[EpochHook]) -> TrainResult:
    cfg, state, source = start.config, start.state, start.source_run
    stats = start.data.stats()
    tracker = tracking.MlflowTracker(client, run_id, patience=cfg.run.tracking_patience)
    tracker.log_params({k: show(v) for k, v in cfg.to_dict().items()})  # `true`, as typed
    tags = _tags(client, run_id, cfg, start.data, source)
    note = start_note(cfg, start.data, run_id, _resumed_how(tags, source, state.epoch))
    tracker.set_tags({**tags, NOTE_TAG: note, **({RUN_NAME_TAG: start.rename} if start.rename else {})})
    tracker.log_json(stats, tracking.DATASET_STATS_ARTIFACT)
    if source and source != run_id:
        _carry_over(client, tracker, source, run_id, start.found)
    tracker.flush()
    exports.log_datasets(client, run_id, start.data, cfg.data.data_seed)
    tracker.skip = tracking.sync_history(client, run_id, state.history)
    state.run_id = run_id

    output_dir = Path(cfg.run.output_dir)
    local = checkpoint_dir(cfg.run.output_dir, run_id)
    hooks = [
        report_writer(tracker, output_dir, stats, run_id),
        gradient_alerts(tracker),
        curves_refresher(tracker, output_dir, cfg.train.checkpoint_interval),
        *callbacks,
    ]
    trained_before = state.epoch
    try:
        with Progress(cfg.train, trained_before) as progress:
            fit(start.trainer, state, tracker, local, on_epoch_end=[*hooks, progress])
        if state.epoch == trained_before:  # killed after its last epoch: only the wrapping-up is left
            log.info("run %s: all %d epochs were already trained; finishing it", run_id, state.epoch)
            hooks[0](state)
        tracker.drain()  # the run is closed only once everything it should hold is sent
        _finish(Finishing(client, run_id, cfg, start.data, state, local))  # with the server answering
        _describe_results(client, tracker, note, state)
    except TrackingLost as e:
        epoch = Manifest.read(manifest_path(local / LAST)).epoch if (local / LAST).exists() else 0
        raise TrackingLost(
            f"{e}: training stopped; the checkpoint of epoch {epoch} is in {local}, and "
            f"`aqtrack train --resume {run_id}` continues from it once the server is back"
        ) from e
    return TrainResult(
        run_id=run_id,
        epochs=state.epoch,
        best_val_acc=state.best_val_acc,
        best_epoch=state.best_epoch,
        history=state.history,
        report_path=output_dir / REPORT_FILE,
        resumed_from=source,
    )


def _resumed_how(tags: dict[str, str], source: str | None, epoch: int) -> str:
    """For the description: how this run came to continue an earlier one ("" for a fresh run)."""
    if tags.get(tracking.TAG_RESUMED_FROM):
        return f"from run `{source}` at epoch {epoch}"
    if source:
        return f"at epoch {epoch} (resume #{tags[tracking.TAG_RESUME_COUNT]})"
    return ""


def _describe_results(client, tracker: tracking.MlflowTracker, note: str, state: TrainState) -> None:
    """Fill the description's results in, once everything else is sent (it reads the run's metrics,
    so an SVM score logged after training shows too)."""
    metrics = client.get_run(state.run_id).data.metrics
    total = Config.from_dict(state.config).train.total_epochs
    tracker.set_tags({NOTE_TAG: final_note(note, state, total, metrics)})
    tracker.drain()


def _finish(job: Finishing) -> None:
    """The finishing stage; a server lost on the way leaves the run RUNNING, for a resume to finish."""
    try:
        finish_run(job)
    except Exception as e:
        if not tracking.is_transient(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrackingLost(f"tracking server {job.client.tracking_uri} lost while finishing ({first})") from e


def checkpoint_dir(output_dir: str | Path, run_id: str) -> Path:
    """Where training writes the run's checkpoint files before uploading them."""
    return Path(output_dir) / "checkpoints" / run_id


def _tags(client, run_id: str, cfg: Config, data: ActionQualityData, source: str | None) -> dict[str, str]:
    tags = {
        tracking.TAG_DATA_SOURCE: data.source,
        tracking.TAG_ROUNDS: str(cfg.train.rounds),
        "aqtrack.version": _version(),
        tracking.TAG_OWNER: f"{socket.gethostname()}:{os.getpid()}",
    }
    if source == run_id:
        count = client.get_run(run_id).data.tags.get(tracking.TAG_RESUME_COUNT, "0")
        tags[tracking.TAG_RESUME_COUNT] = str(int(count) + 1)
    elif source:
        tags[tracking.TAG_RESUMED_FROM] = source
    return tags


def _carry_over(client, tracker: tracking.MlflowTracker, source: str, run_id: str, found: Found) -> None:
    """Resumed into a new run (under `mlflow run`): give it the checkpoint it starts from, as its
    last.pt, and the source's best checkpoint (when it verifies), and link the two runs."""
    carry = found.path.parent / "carry-over"
    carry.mkdir()
    shutil.copyfile(found.path, carry / LAST)
    files = [carry / LAST, Manifest.of(carry / LAST, found.state.epoch, run_id).write(carry)]
    best = tracking.download_artifact(client, source, f"{ARTIFACT_DIR}/{BEST}", carry / "best")
    best_manifest = tracking.download_artifact(
        client, source, f"{ARTIFACT_DIR}/{BEST}{MANIFEST_SUFFIX}", carry / "best"
    )
    if best and best_manifest:
        try:
            verify_checkpoint(best, Manifest.read(best_manifest))
            files += [best, best_manifest]
        except ResumeError as e:
            log.warning("run %s: not carrying over its best checkpoint: %s", source, e)
    for path in files:
        tracker.log_artifact(path, ARTIFACT_DIR)
    client.set_tag(source, tracking.TAG_CONTINUED_IN, run_id)


def rebuild_report(run_id: str, output_dir: Path) -> Path:
    """Rebuild `experiment_report.json` for any run from its MLflow metrics (plus its checkpoint's
    batch losses and dataset stats, where the run has them)."""
    client = tracking.connect()
    run = tracking.get_run(client, run_id, label="report")
    points = tracking.fetch_history(client, run_id, METRIC_KEYS)
    with tempfile.TemporaryDirectory(prefix="aqtrack-report-") as tmp:
        try:
            batch_source = find_checkpoint(client, run_id, None, Path(tmp), label="report").state.history
        except ResumeError as e:
            log.warning("%s: the report has no batch losses", e)
            batch_source = None
        stats_path = tracking.download_artifact(client, run_id, tracking.DATASET_STATS_ARTIFACT, Path(tmp))
        stats = json.loads(stats_path.read_text()) if stats_path else {}
    history, epochs = history_from_points(points, batch_source)
    config = {k: _number(v) for k, v in run.data.params.items()}
    config["rounds"] = _number(run.data.tags.get(tracking.TAG_ROUNDS, config.get("rounds")))
    report = build_report(history, epochs=epochs, dataset_stats=stats, run_id=run_id, config=config)
    return write_report(report, output_dir)


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".aqtrack-write-check-"):
            pass
    except OSError as e:
        raise ConfigError(
            f"{flag('output_dir')} {directory}: not writable ({e.strerror or e}); choose another directory"
        ) from e


def _number(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        return value


def _version() -> str:
    try:
        return version("aqtrack")
    except PackageNotFoundError:
        return "unknown"
