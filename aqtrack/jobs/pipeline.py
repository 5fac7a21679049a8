"""The public Python API: `train` (a new run, a resume or a fork) and `rebuild_report`. The CLI calls these.

Everything that can be refused is checked as early as it can be: settings and the data file before the
tracking store is even contacted (a refused file leaves no `mlflow.db`), the run to continue and its
checkpoint before any run is created or touched. So bad input never leaves a half-made run behind.

Which run a training writes into (`MLFLOW_RUN_ID` is set by `mlflow run` for the run it made, and by
users to re-attach):

| asked for          | MLFLOW_RUN_ID unset | it names an empty run    | it names a run holding a training |
|--------------------|---------------------|--------------------------|-----------------------------------|
| a new run          | a new run           | that run                 | a new run (a warning says why)    |
| `--resume ID`      | run ID itself       | that run, with ID's past | run ID itself                     |
| `--fork ID`        | a new run           | that run                 | a new run                         |

A training never writes a second history into a run that holds one. A fold of a cross-validation
(`train_fold`) is a run nested under its CV parent, and never takes MLFLOW_RUN_ID's run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from aqtrack import names
from aqtrack.config import (
    RESUMABLE,
    Config,
    DataConfig,
    check_values,
    flag,
    forked,
    parse_param,
    resumed,
    show,
)
from aqtrack.data.dataset import SYNTHETIC, ActionQualityData, load_configured
from aqtrack.errors import ConfigError, DistributedError, ResumeError, TrackingLost, first_line
from aqtrack.jobs import collector
from aqtrack.jobs.curves import curves_refresher
from aqtrack.jobs.finish import Finishing, finish_run
from aqtrack.names import (
    ARTIFACT_DIR,
    BEST,
    CHECKPOINT_EPOCH_TAG,
    CHECKPOINTS_DIR,
    LAST,
    LEGACY_CHECKPOINTS,
    METRIC_KEYS,
    NOTE_TAG,
    REPORT_FILE,
    RUN_NAME_TAG,
    VAL_ACC,
)
from aqtrack.outputs.alerts import gradient_alerts
from aqtrack.outputs.progress import Progress
from aqtrack.outputs.report import build_report, history_from_points, report_writer, write_report
from aqtrack.tracking import exports, store
from aqtrack.tracking.describe import GENERATED_NAME_RE, final_note, run_name, start_note
from aqtrack.tracking.lock import run_lock, try_run_lock
from aqtrack.tracking.resume import Found, files_of, find_at_epoch, find_checkpoint, unpublished
from aqtrack.training import distributed
from aqtrack.training.checkpoint import History, Manifest, TrainState, manifest_path, write_checkpoints
from aqtrack.training.distributed import World
from aqtrack.training.interrupts import ignored_signals, stop_signals
from aqtrack.training.loop import EpochHook, NullTracker, Trainer, build_trainer, fit, restore, restore_fork

log = logging.getLogger(__name__)

AUTO = "auto"


@dataclass
class TrainResult:
    run_id: str
    epochs: int
    best_val_acc: float  # val_acc at the best epoch
    best_epoch: int  # the epoch the run selected (by `select_by`, on the validation split)
    history: History
    report_path: Path
    resumed_from: str | None  # the run whose checkpoint this training started from (resume or fork)
    select_by: str = VAL_ACC
    best_score: float = -1.0  # the best value of `select_by`
    test_scores: dict[str, float] = field(default_factory=dict)  # the test split, evaluated once


@dataclass(frozen=True)
class Nest:
    """Where a fold of a cross-validation trains: a new run nested under the CV parent, with tags that
    let a resume find it (see `aqtrack.jobs.crossval`)."""

    parent_id: str
    tags: dict[str, str]


@dataclass(frozen=True)
class Request:
    """What the caller asked for. `settings` holds exactly the settings given explicitly (a flag,
    `-P name=value`, a keyword), whatever their values: a setting not given is never inferred from
    comparing a value with its default."""

    resume: str | None = None  # a run id, "auto", or None
    fork: str | None = None  # a run id
    fork_epoch: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    nest: Nest | None = None  # a fold of a cross-validation: a new run goes under its parent

    def __post_init__(self) -> None:
        if self.resume and self.fork:
            raise ConfigError("pass --resume or --fork, not both: a fork starts a new run, a resume does not")
        if self.fork_epoch is not None and not self.fork:
            raise ConfigError("--fork-epoch needs --fork RUN_ID (the run to fork)")
        if self.fork_epoch is not None and self.fork_epoch < 1:
            raise ConfigError(f"--fork-epoch must be >= 1 (got {self.fork_epoch})", setting="fork_epoch")
        for label, run_id in (("--resume", self.resume), ("--fork", self.fork)):
            if run_id and run_id != AUTO and not store.RUN_ID_RE.match(run_id):
                raise ResumeError(f"{label} {run_id!r}: not a run id (32 lowercase hex characters)")
        if self.fork == AUTO:
            raise ResumeError("--fork auto: a fork needs the id of the run to fork")


def train(
    resume: str | None = None,
    *,
    fork: str | None = None,
    fork_epoch: int | None = None,
    callbacks: Iterable[EpochHook] = (),
    **settings: Any,
) -> TrainResult:
    """Train a new run, resume one by id (or "auto": the newest unfinished run of the same job), or
    fork one: a new run from its checkpoint at `fork_epoch`, with any settings changed but the data and
    the network's shape.

    `settings` are Config fields by name, e.g. `train(rounds=1, epochs_per_round=5)`; the ones passed
    are "given", whatever their values. When resuming, the run's own settings apply and only
    `config.RESUMABLE` ones (rounds, ...) may change. `callbacks` are called with the training state
    at the end of each epoch, once its checkpoint is written, just before the epoch is sent to MLflow.

    Under torchrun, rank 0 does all of this (callbacks included) and the other ranks follow it.
    """
    return _train(Request(resume or None, fork or None, fork_epoch, settings), callbacks)


def train_fold(nest: Nest, resume: str | None = None, **settings: Any) -> TrainResult:
    """A fold of a cross-validation: a new run nested under `nest.parent_id` (resume: the fold's run
    itself), trained exactly as `train` trains any run. MLFLOW_RUN_ID names the parent under `mlflow
    run`, so a fold never takes that run."""
    if resume == AUTO:
        raise ResumeError("a fold resumes by its run id, not auto")
    return _train(Request(resume, settings=settings, nest=nest), ())


def _train(request: Request, callbacks: Iterable[EpochHook]) -> TrainResult:
    with distributed.joined() as world:
        if not world.is_main:
            return _follow(world)
        try:
            with collector.paused():  # for the set-up and the finishing stage; on for the epochs
                return _lead(world, request, callbacks)
        except BaseException as e:
            world.refuse(e)  # the other ranks, still waiting for a plan, stop too
            raise


def _absolute_data(settings: dict[str, Any]) -> dict[str, Any]:
    """A data file as an absolute path: what the run records must find it again from anywhere."""
    data = settings.get("data")
    if not data or data == SYNTHETIC or not Path(data).exists():
        return settings
    return {**settings, "data": str(Path(data).resolve())}


def _absolute_early(early: _Early) -> _Early:
    """`early` with its configs naming the data file by absolute path (the data already loaded)."""
    config, data_config = early.config, early.data_config
    if config is not None:
        config = Config.from_dict(_absolute_data(config.to_dict()))
    if data_config is not None:
        data_config = replace(data_config, data=_absolute_data({"data": data_config.data})["data"])
    return replace(early, config=config, data_config=data_config)


@dataclass
class _Early:
    """What can be checked before the tracking store is contacted: a new run's whole config and its data
    (for a resume or fork, the given settings one by one and a given data file)."""

    config: Config | None = None
    data: ActionQualityData | None = None
    data_config: DataConfig | None = None


@dataclass
class _Origin:
    """Where a training starts: from scratch, or another run's (or its own) verified checkpoint."""

    kind: str  # "new", "resume" or "fork"
    run: Any = None  # the run whose checkpoint it starts from
    found: Found | None = None
    local_dirs: list[Path] = field(default_factory=list)  # where that run's local copies may be
    experiment: str = ""  # the name of that run's experiment

    def __post_init__(self) -> None:
        # The settings the checkpoint was trained with (the training's own replace them in its state).
        self.source_config = dict(self.found.state.config) if self.found else {}


@dataclass
class _Start:
    """A validated plan: what to train, from which state."""

    config: Config
    data: ActionQualityData
    trainer: Trainer
    state: TrainState
    origin: _Origin

    @property
    def source(self) -> str | None:
        return self.origin.run.info.run_id if self.origin.run is not None else None


@dataclass(frozen=True)
class _Opened:
    """The run a training writes into, once it holds it (its lock)."""

    run_id: str
    rename: str  # a name to give the run with its first tags ("": keep its name)


@dataclass
class _Plan:
    """What rank 0 tells the other ranks once the run is open: where and from which state to train."""

    run_id: str
    state: TrainState
    source_run: str | None


def _lead(world: World, request: Request, callbacks: Iterable[EpochHook]) -> TrainResult:
    """Check everything, open the run, tell the other ranks (if any), train and record."""
    early = _check_early(request)
    # Messages named the file as given; what the run records must find it again from anywhere.
    request = replace(request, settings=_absolute_data(request.settings))
    early = _absolute_early(early)
    client = store.connect()
    env = None if request.nest else store.env_run(client)
    with tempfile.TemporaryDirectory(prefix="aqtrack-start-") as tmp, contextlib.ExitStack() as held:
        origin = _origin(client, request, early, env, held, Path(tmp))
        start = _prepare(origin, request.settings, early, world)
        opened = _open_run(client, start, env, held, request.nest)
        _record_experiment(client, opened.run_id, start)
        # The other ranks restore what this trainer holds now (for a fork: its own hyperparameters).
        shared = start.state if start.origin.kind == "new" else start.trainer.snapshot(start.state)
        world.share_plan(_Plan(opened.run_id, shared, start.source))
        with (
            stop_signals(),
            store.terminating(client, opened.run_id),
            store.system_metrics(client, opened.run_id, start.config.run.system_metrics),
        ):
            # DDP's constructor is a collective: every rank wraps its model here, after the plan.
            start.trainer.net = distributed.wrap(start.trainer.model, start.trainer.device, world)
            return _train_in_run(client, opened, start, Path(tmp), callbacks)


def _check_early(request: Request) -> _Early:
    """Settings and the data file, before any store exists: a bad flag is reported even with the
    server down, and a refused file creates no store."""
    settings = request.settings
    if request.fork is None and request.resume in (None, AUTO):
        config = Config.from_dict(settings)
        check_writable(Path(config.run.output_dir))
        return _Early(config, load_configured(config.data), config.data)
    check_values(settings)
    if "output_dir" in settings:
        check_writable(Path(settings["output_dir"]))
    data_given = {k: v for k, v in settings.items() if k in DataConfig.__dataclass_fields__}
    if not data_given:
        return _Early()
    data_config = DataConfig(**data_given)  # the run's own split settings may differ: checked later
    return _Early(data=load_configured(data_config), data_config=data_config)


def _origin(client, request: Request, early: _Early, env, held: contextlib.ExitStack, tmp: Path) -> _Origin:
    if request.fork:
        run = store.get_run(client, request.fork, label="--fork")
        local_dirs = _local_dirs(run, request.settings)
        found = find_at_epoch(client, run.info.run_id, local_dirs, tmp, request.fork_epoch)
        experiment = client.get_experiment(run.info.experiment_id).name
        return _Origin("fork", run, found, local_dirs, experiment)
    if request.resume == AUTO:
        return _newest_unfinished(client, early.config, env, held, tmp)
    if request.resume:
        run = store.get_run(client, request.resume)
        _check_not_cv(run)
        # Before its checkpoint is read: a second resumer must not even download it.
        held.enter_context(run_lock(client.tracking_uri, run.info.run_id))
        _check_not_continued(run)
        _check_experiment(client, run, request.settings, env)
        _check_not_running_elsewhere(run)
        local_dirs = _local_dirs(run, request.settings)
        return _Origin("resume", run, find_checkpoint(client, run.info.run_id, local_dirs, tmp), local_dirs)
    return _Origin("new")


def _newest_unfinished(client, wanted: Config, env, held: contextlib.ExitStack, tmp: Path) -> _Origin:
    """`--resume auto`: the newest unfinished run of the same job (experiment, data and every setting a
    resume cannot change) that no live process holds and that has a verified checkpoint; else a new run.
    Other runs, crashed or not, are passed over."""
    experiment_id = env.info.experiment_id if env else store.find_experiment_id(client, wanted.run.experiment)
    for run in store.unfinished_runs(client, experiment_id):
        run_id = run.info.run_id
        if env is not None and run_id == env.info.run_id:
            continue
        if names.TAG_CONTINUED_IN in run.data.tags:  # its history goes on in another run
            continue
        differs = _job_differences(run, wanted)
        if differs:
            log.debug("--resume auto: run %s is another job (%s)", run_id, ", ".join(differs))
            continue
        candidate = contextlib.ExitStack()
        busy = store.running_on_another_machine(run)
        if busy or not try_run_lock(candidate, client.tracking_uri, run_id):
            log.info("--resume auto: passing over run %s: %s", run_id, busy or "another process trains it")
            candidate.close()
            continue
        local_dirs = _local_dirs(run, {"output_dir": wanted.run.output_dir})
        try:
            found = find_checkpoint(client, run_id, local_dirs, tmp)
        except ResumeError as e:
            log.warning("--resume auto: passing over run %s: %s", run_id, e)
            candidate.close()
            continue
        held.enter_context(candidate.pop_all())
        log.info("--resume auto: continuing run %s from epoch %d", run_id, found.state.epoch)
        return _Origin("resume", run, found, local_dirs)
    log.info("--resume auto: no unfinished run of this job: a new run")
    return _Origin("new")


def _job_differences(run, wanted: Config) -> list[str]:
    """The settings a resume could not change that the run has otherwise (or did not log)."""
    params = run.data.params
    return [
        name
        for name, value in wanted.to_dict().items()
        if name not in RESUMABLE and (name not in params or parse_param(name, params[name]) != value)
    ]


def _prepare(origin: _Origin, given: dict[str, Any], early: _Early, world: World) -> _Start:
    """The config, data and trainer, restored to the origin's checkpoint."""
    state = origin.found.state if origin.found else None
    saved, data = _the_runs_data(origin, given, early) if state else (None, None)
    if origin.kind == "resume":
        cfg = resumed(saved, given)
        _check_rounds(origin.run, cfg, state.epoch)
        _say_what_is_rerun(origin.run, state.epoch)
    elif origin.kind == "fork":
        cfg = forked(saved, given)
        # A fork is a new run: named afresh, and in its source's experiment, unless told otherwise.
        cfg = cfg.replace(
            run_name=given.get("run_name", ""), experiment=given.get("experiment", origin.experiment)
        )
        if cfg.train.total_epochs <= state.epoch:
            raise ConfigError(
                f"--fork {origin.run.info.run_id} --fork-epoch {state.epoch}: {flag('rounds')} "
                f"{cfg.train.rounds} x {flag('epochs_per_round')} {cfg.train.epochs_per_round} leaves "
                "nothing to train after the fork epoch; pass more rounds"
            )
    else:
        cfg = early.config
    check_writable(Path(cfg.run.output_dir))
    if data is None:
        data = early.data if early.data_config == cfg.data else load_configured(cfg.data)
    trainer = build_trainer(cfg, data, distributed.resolve_device(cfg.train.device, world), world)
    if origin.kind == "resume":
        restore(trainer, state)
    elif origin.kind == "fork":
        restore_fork(trainer, state, source_seed=Config.from_dict(origin.source_config).train.seed)
    else:
        state = TrainState(config=cfg.to_dict(), model_spec=trainer.spec.to_dict())
    state.config = cfg.to_dict()
    _check_classes(state, data)
    state.data_digest = state.data_digest or data.digest()
    return _Start(cfg, data, trainer, state, origin)


def _the_runs_data(origin: _Origin, given: dict[str, Any], early: _Early) -> tuple[Config, ActionQualityData]:
    """The config a resume or fork starts from, and the run's data, checked by its content: a --data
    path that holds the same content (the file moved, another machine) takes the saved path's place; a
    file whose content changed since the run trained on it is refused."""
    state, label = origin.found.state, f"--{origin.kind} {origin.run.info.run_id}"
    saved = Config.from_dict(state.config)
    if "data" in given and given["data"] != saved.data.data:
        moved = dataclasses.replace(saved.data, data=given["data"])
        data = early.data if early.data_config == moved else load_configured(moved)
        if state.data_digest and data.digest() == state.data_digest:
            log.info("%s: its data, at %s (the same content as %s)", label, given["data"], saved.data.data)
            return saved.replace(data=given["data"]), data
    if saved.data.data != SYNTHETIC and not Path(saved.data.data).is_file():
        raise ResumeError(
            f"{label}: its data file {saved.data.data} is not here; pass {flag('data')} PATH of the same "
            "file (it is checked by its content)"
        )
    data = early.data if early.data_config == saved.data else load_configured(saved.data)
    if state.data_digest and data.digest() != state.data_digest:
        raise ResumeError(
            f"{label}: the data at {saved.data.data} is not what the run trained on (its content changed "
            "since); continue with the run's own data, or start a new run"
        )
    return saved, data


def _check_classes(state: TrainState, data: ActionQualityData) -> None:
    """The checkpoint's classes are the data's, in the same order (the logits mean the same classes)."""
    names = list(data.class_names)
    if state.class_names and state.class_names != names:
        raise ResumeError(
            f"the checkpoint's classes are {', '.join(state.class_names)}, the data's {', '.join(names)}; "
            "continue with the data the run was trained on"
        )
    state.class_names = names


def _check_rounds(run, cfg: Config, epoch: int) -> None:
    total, run_id = cfg.train.total_epochs, run.info.run_id
    if total < epoch:
        need = math.ceil(epoch / cfg.train.epochs_per_round)
        raise ResumeError(
            f"--resume {run_id}: the run has trained {epoch} epochs, more than {flag('rounds')} "
            f"{cfg.train.rounds} x {cfg.train.epochs_per_round} ({total}); pass {flag('rounds')} {need} "
            "or more"
        )
    if total == epoch and run.info.status == "FINISHED":
        raise ResumeError(
            f"--resume {run_id}: the run has trained {epoch} of {total} epochs "
            f"({run.info.status}); pass {flag('rounds')} above {cfg.train.rounds} to train longer"
        )


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
        restore(trainer, state)  # rank 0's restored state: a fork's hyperparameters are in it already
    with ignored_signals():
        trainer.net = distributed.wrap(trainer.model, device, world)  # a collective, as on rank 0
        try:
            fit(trainer, state, NullTracker(), None)
        except RuntimeError as e:
            if not distributed.lost_peer(e):
                raise
            raise DistributedError(
                f"rank {world.rank}: lost the other processes in epoch {state.epoch + 1}; rank 0's output "
                "says why it stopped"
            ) from e
    return _result(plan.run_id, state, cfg, plan.source_run)


def _result(
    run_id: str, state: TrainState, cfg: Config, source: str | None, test: dict[str, float] | None = None
) -> TrainResult:
    return TrainResult(
        run_id=run_id,
        epochs=state.epoch,
        best_val_acc=state.best_val_acc,
        best_epoch=state.best_epoch,
        history=state.history,
        report_path=run_directory(cfg.run.output_dir, run_id) / REPORT_FILE,
        resumed_from=source,
        select_by=cfg.train.select_by,
        best_score=state.best_score,
        test_scores=dict(test or {}),
    )


def run_directory(output_dir: str | Path, run_id: str) -> Path:
    """A run's own local folder: its legacy report, checkpoint copies and plots. Runs sharing an
    --output-dir never share files, and the legacy monitor lists each folder as its own training."""
    return Path(output_dir) / run_id


def checkpoint_dir(output_dir: str | Path, run_id: str) -> Path:
    """Where training writes the run's checkpoint files before uploading them."""
    return run_directory(output_dir, run_id) / CHECKPOINTS_DIR


def _local_dirs(run, settings: dict[str, Any]) -> list[Path]:
    """Where the run's local checkpoint copies may be: under the --output-dir given now, else the run's
    own (its param), in today's layout and the one before it."""
    output_dir = settings.get("output_dir") or run.data.params.get("output_dir") or Config().run.output_dir
    run_id = run.info.run_id
    return [checkpoint_dir(output_dir, run_id), Path(output_dir) / LEGACY_CHECKPOINTS / run_id]


def _check_experiment(client, run, settings: dict[str, Any], env) -> None:
    """A run id from another experiment than the one asked for is a mistake, not a wish to move it."""
    if env is not None:  # under `mlflow run`, the experiment is the one MLflow's run is in
        wanted = client.get_experiment(env.info.experiment_id).name
    elif "experiment" in settings:
        wanted = settings["experiment"]
    else:
        return
    actual = client.get_experiment(run.info.experiment_id).name
    if actual != wanted:
        raise ResumeError(
            f"--resume {run.info.run_id}: the run is in experiment {actual!r}, not {wanted!r}; "
            "resume it in its own experiment, or check the run id"
        )


def _check_not_continued(run) -> None:
    """A run continued in another run (a resume under `mlflow run`) goes on there: resuming it again
    would grow a second, diverging history of the same training."""
    continued = run.data.tags.get(names.TAG_CONTINUED_IN)
    if continued:
        raise ResumeError(
            f"--resume {run.info.run_id}: the run was continued in run {continued}; resume that one, or "
            f"fork this one (--fork {run.info.run_id} --fork-epoch N) to try something else"
        )


def _check_not_cv(run) -> None:
    """A cross-validation's parent run trains nothing itself: its folds do."""
    if names.TAG_CV in run.data.tags:
        run_id = run.info.run_id
        raise ResumeError(
            f"--resume {run_id}: the run is a cross-validation (its folds are nested runs); continue it "
            f"with `aqtrack cv --resume {run_id}`"
        )


def _check_not_running_elsewhere(run) -> None:
    """The lock covers this machine (we hold it); across machines, the heartbeat decides."""
    busy = store.running_on_another_machine(run)
    if busy:
        run_id = run.info.run_id
        raise ResumeError(
            f"--resume {run_id}: the run is {busy}; if that process is gone, mark the run KILLED "
            f"(MlflowClient().set_terminated('{run_id}', 'KILLED')) or wait until it has been quiet for "
            f"{store.STALE_AFTER_S} s"
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


def _open_run(client, start: _Start, env, held: contextlib.ExitStack, nest: Nest | None) -> _Opened:
    """The run to train in, held (locked) by this process: see the module docstring's table."""
    cfg, origin, source = start.config, start.origin, start.source
    name = cfg.run.run_name
    resuming = origin.kind == "resume"
    if env is not None and not (resuming and env.info.run_id == source):
        if adopt(client, env, held):
            return _Opened(env.info.run_id, name or _readable(cfg, env.info.run_name))
        env_id = env.info.run_id
        goes = f"continuing run {source} itself" if resuming else "training in a new run"
        log.warning(
            "%s=%s names a run that holds a training already (or another process is starting one in "
            "it); %s%s",
            names.MLFLOW_RUN_ENV,
            env_id,
            goes,
            "" if resuming else f" (to continue {env_id}: aqtrack train --resume {env_id})",
        )
    if resuming:
        client.update_run(source, status="RUNNING", name=name or None)
        return _Opened(source, "")
    if nest is not None:  # a fold: in its parent's experiment, nested under it
        run_id = store.create_child_run(client, client.get_run(nest.parent_id), name, nest.tags)
        held.enter_context(run_lock(client.tracking_uri, run_id))
        return _Opened(run_id, "")
    experiment_id = (
        env.info.experiment_id if env else store.get_or_create_experiment(client, cfg.run.experiment)
    )
    run = store.create_run(client, experiment_id, name or None)
    held.enter_context(run_lock(client.tracking_uri, run.info.run_id))
    return _Opened(run.info.run_id, "" if name else _readable(cfg, run.info.run_name))


def _record_experiment(client, run_id: str, start: _Start) -> None:
    """The run's `experiment` setting is the experiment it is in (under `mlflow run`, MLflow chose it):
    what its params and checkpoints say must be true."""
    actual = client.get_experiment(client.get_run(run_id).info.experiment_id).name
    if actual != start.config.run.experiment:
        start.config = start.config.replace(experiment=actual)
        start.state.config = start.config.to_dict()


def adopt(client, env, held: contextlib.ExitStack) -> bool:
    """Take the MLFLOW_RUN_ID run if it holds no training and no other process is taking it."""
    run_id = env.info.run_id
    candidate = contextlib.ExitStack()
    if not try_run_lock(candidate, client.tracking_uri, run_id):
        return False
    if store.holds_training(client.get_run(run_id)):  # read again, under the lock
        candidate.close()
        return False
    held.enter_context(candidate.pop_all())
    if client.get_run(run_id).info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")
    return True


def _readable(cfg: Config, name: str) -> str:
    """MLflow's generated name ("bold-owl-123") prefixed with what the run is; other names kept."""
    return run_name(cfg, name) if GENERATED_NAME_RE.match(name or "") else ""


def _train_in_run(
    client, opened: _Opened, start: _Start, tmp: Path, callbacks: Iterable[EpochHook]
) -> TrainResult:
    cfg, state, run_id = start.config, start.state, opened.run_id
    state.run_id = run_id
    folder = run_directory(cfg.run.output_dir, run_id)
    local = folder / CHECKPOINTS_DIR
    tracker = store.MlflowTracker(
        client, run_id, patience=cfg.run.tracking_patience, interval=cfg.run.publish_interval
    )
    # First the files the run starts from (each before its manifest, then the checkpoint-epoch tag),
    # then what the run is; the links to the source run go out last, once this run is whole.
    files, epoch_tag = _starting_files(client, run_id, start, local, tmp)
    for path in files:
        tracker.log_artifact(path, ARTIFACT_DIR)
    tracker.log_params({k: show(v) for k, v in cfg.to_dict().items()})  # `true`, as typed
    tags = _tags(client, run_id, start, epoch_tag)
    note = start_note(cfg, start.data, run_id, _how_it_started(start, run_id, tags))
    tracker.set_tags({**tags, NOTE_TAG: note, **({RUN_NAME_TAG: opened.rename} if opened.rename else {})})
    tracker.log_json(start.data.stats(), names.DATASET_STATS_ARTIFACT)
    tracker.flush()
    _link_source(client, start, run_id)
    exports.log_datasets(client, run_id, start.data, cfg.data.data_seed)
    tracker.skip_logged(store.sync_history(client, run_id, state.history))

    report = report_writer(tracker, folder, start.data.stats(), run_id)  # written as the run is published
    hooks = [
        report,
        gradient_alerts(tracker),
        curves_refresher(tracker, folder, cfg.train.checkpoint_interval),
        *callbacks,
    ]
    trained_before = state.epoch
    try:
        with (
            Progress(cfg.train, trained_before) as progress,
            _published_when_stopping(tracker),
            collector.collecting(),
        ):
            fit(start.trainer, state, tracker, local, on_epoch_end=[*hooks, progress])
        if state.epoch == trained_before:  # killed after its last epoch: only the wrapping-up is left
            log.info("run %s: all %d epochs were already trained; finishing it", run_id, state.epoch)
            report.write(state)
        tracker.drain()  # the run is closed only once everything it should hold is sent
        test = _finish(Finishing(client, run_id, cfg, start.data, state, local))  # with the server answering
        _describe_results(client, tracker, note, state)
    except TrackingLost as e:
        epoch = Manifest.read(manifest_path(local / LAST)).epoch if (local / LAST).exists() else 0
        raise TrackingLost(
            f"{e}: training stopped; the checkpoint of epoch {epoch} is in {local}, and "
            f"`aqtrack train --resume {run_id}` continues from it once the server is back"
        ) from e
    return _result(run_id, state, cfg, start.source, test)


@contextlib.contextmanager
def _published_when_stopping(tracker: store.MlflowTracker) -> Iterator[None]:
    """Whatever stops the training (Ctrl-C, SIGTERM, a diverged epoch, a bug), the epochs the publishing
    budget held back are sent before the run is marked (`MlflowTracker.publish_held`); if that fails,
    a resume publishes them from the local checkpoints."""
    try:
        yield
    except TrackingLost:
        raise
    except BaseException:
        try:
            tracker.publish_held()
        except Exception as e:  # the first error is the one to report
            log.warning("could not publish the last epochs before stopping: %s", first_line(e))
        raise


def _starting_files(client, run_id: str, start: _Start, local: Path, tmp: Path) -> tuple[list[Path], int]:
    """The checkpoint files to publish before training, and the epoch of the run's last.pt after them.

    Continuing in the same run: the local copies its artifacts lack or hold older (a process that died
    before uploading them, or lost its server), so the run never ends holding checkpoints older than its
    last epoch. Starting from another run (a resume under `mlflow run`, a fork): the starting state as
    this run's last.pt, and its best checkpoint so far as this run's best."""
    state, origin = start.state, start.origin
    if origin.kind == "new":
        return [], 0
    if origin.kind == "resume" and start.source == run_id:
        found = [f for d in origin.local_dirs if d.is_dir() for f in unpublished(client, run_id, d, tmp)]
        published = [m.epoch for _, m in found if m.file == LAST]
        if found:
            log.info("run %s: publishing %d local checkpoint file(s) it lacks", run_id, len(found))
        return files_of(found), max(published, default=0)
    best = _best_so_far(client, start, tmp)
    names = [LAST] if best is not None else [BEST, LAST]
    files = write_checkpoints(start.trainer.snapshot(state), local, names)
    if best is not None:
        best.config, best.run_id = state.config, run_id
        files = write_checkpoints(best, local, [BEST]) + files
    return files, state.epoch


def _best_so_far(client, start: _Start, tmp: Path) -> TrainState | None:
    """The best checkpoint of the source run up to the starting epoch, when it is not the starting
    checkpoint itself (None then). A fork from before the source's newest best may not find it stored
    (best files are replaced as the best improves); the fork's best then starts at the fork epoch."""
    state, origin = start.state, start.origin
    if state.best_epoch == state.epoch:
        return None
    try:
        return find_at_epoch(client, start.source, origin.local_dirs, tmp, state.best_epoch).state
    except ResumeError:
        select_by = start.config.train.select_by
        score = state.history.metrics[select_by][state.epoch - 1]
        log.warning(
            "run %s: its best checkpoint up to epoch %d (epoch %d, %s %.4f) is not stored; the new "
            "run's best starts from epoch %d (%s %.4f)",
            start.source,
            state.epoch,
            state.best_epoch,
            select_by,
            state.best_score,
            state.epoch,
            select_by,
            score,
        )
        state.best_score, state.best_epoch = score, state.epoch
        return None


def _tags(client, run_id: str, start: _Start, epoch_tag: int) -> dict[str, str]:
    cfg, origin, source = start.config, start.origin, start.source
    tags = {
        names.TAG_DATA_SOURCE: start.data.source,
        names.TAG_FILLED_VALUES: str(start.data.filled_values),
        names.TAG_ROUNDS: str(cfg.train.rounds),
        names.TAG_VERSION: aqtrack_version(),
        names.TAG_OWNER: f"{socket.gethostname()}:{os.getpid()}",
    }
    if epoch_tag:
        tags[CHECKPOINT_EPOCH_TAG] = str(epoch_tag)
    if origin.kind == "resume" and source == run_id:
        count = client.get_run(run_id).data.tags.get(names.TAG_RESUME_COUNT, "0")
        tags[names.TAG_RESUME_COUNT] = str(int(count) + 1)
    elif origin.kind == "resume":
        tags[names.TAG_RESUMED_FROM] = source
    elif origin.kind == "fork":
        tags[names.TAG_FORKED_FROM] = f"{source}@{start.state.epoch}"
    return tags


def _link_source(client, start: _Start, run_id: str) -> None:
    """On the source run, the one tag it gets: where it was continued, or forked."""
    source = start.source
    if start.origin.kind == "resume" and source != run_id:
        client.set_tag(source, names.TAG_CONTINUED_IN, run_id)
    elif start.origin.kind == "fork":
        forks = client.get_run(source).data.tags.get(names.TAG_FORKS, "")
        entry = f"{run_id}@{start.state.epoch}"
        client.set_tag(source, names.TAG_FORKS, ",".join(filter(None, [forks, entry])))


def _how_it_started(start: _Start, run_id: str, tags: dict[str, str]) -> str:
    """For the description: how this run came to continue an earlier one ("" for a fresh run)."""
    origin, epoch, source = start.origin, start.state.epoch, start.source
    if origin.kind == "fork":
        saved = Config.from_dict(origin.source_config).to_dict()
        changes = [f"{k} {saved[k]} → {v}" for k, v in start.config.to_dict().items() if saved[k] != v]
        changed = f" with {', '.join(changes)}" if changes else " with the same settings"
        return f"**Forked** from run `{source}` at epoch {epoch}{changed}."
    if origin.kind == "resume" and source != run_id:
        return f"**Resumed** from run `{source}` at epoch {epoch}."
    if origin.kind == "resume":
        return f"**Resumed** at epoch {epoch} (resume #{tags[names.TAG_RESUME_COUNT]})."
    return ""


def _describe_results(client, tracker: store.MlflowTracker, note: str, state: TrainState) -> None:
    """Fill the description's results in, once everything else is sent (it reads the run's metrics,
    so an SVM score logged after training shows too)."""
    metrics = client.get_run(state.run_id).data.metrics
    total = Config.from_dict(state.config).train.total_epochs
    tracker.set_tags({NOTE_TAG: final_note(note, state, total, metrics)})
    tracker.drain()


def _finish(job: Finishing) -> dict[str, float]:
    """The finishing stage; a server lost on the way leaves the run RUNNING, for a resume to finish.
    Returns the test scores."""
    try:
        return finish_run(job)
    except Exception as e:
        if not store.is_transient(e):
            raise
        raise TrackingLost(
            f"tracking server {job.client.tracking_uri} lost while finishing ({first_line(e)})"
        ) from e


def rebuild_report(run_id: str, output_dir: Path) -> Path:
    """Rebuild `experiment_report.json` for any run from its MLflow metrics (plus its checkpoint's
    batch losses and dataset stats, where the run has them)."""
    client = store.connect(existing=True)
    run = store.get_run(client, run_id, label="report")
    points = store.fetch_history(client, run_id, METRIC_KEYS)
    with tempfile.TemporaryDirectory(prefix="aqtrack-report-") as tmp:
        try:
            batch_source = find_checkpoint(client, run_id, [], Path(tmp), label="report").state.history
        except ResumeError as e:
            log.warning("%s: the report has no batch losses", e)
            batch_source = None
        stats_path = store.download_if_present(client, run_id, names.DATASET_STATS_ARTIFACT, Path(tmp))
        stats = json.loads(stats_path.read_text()) if stats_path else {}
    history, epochs = history_from_points(points, batch_source)
    config = {k: _number(v) for k, v in run.data.params.items()}
    config["rounds"] = _number(run.data.tags.get(names.TAG_ROUNDS, config.get("rounds")))
    report = build_report(history, epochs=epochs, dataset_stats=stats, run_id=run_id, config=config)
    return write_report(report, output_dir)


def check_writable(directory: Path) -> None:
    """Refuse an --output-dir that cannot be written, without creating it (nothing is made for a
    refused start): a write test in it, or in its nearest existing parent."""
    existing = next(p for p in (directory, *directory.parents) if p.exists() or p == p.parent)
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".aqtrack-write-check-"):
            pass
    except OSError as e:
        raise ConfigError(
            f"{flag('output_dir')} {directory}: not writable ({e.strerror or e}); choose another directory",
            setting="output_dir",
        ) from e


def _number(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        return value


def aqtrack_version() -> str:
    try:
        return version("aqtrack")
    except PackageNotFoundError:
        return "unknown"
