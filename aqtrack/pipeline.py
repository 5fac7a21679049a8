"""The public Python API: `train` (new or resumed run) and `rebuild_report`. The CLI calls these.

Everything that can be refused (settings, data, the run to resume, its checkpoint) is checked before
any run is created or touched, so bad input never leaves a half-made run behind.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from aqtrack import tracking
from aqtrack.checkpoint import ARTIFACT_DIR, BEST, LAST, History, TrainState, load_checkpoint
from aqtrack.config import Config, flag, resumed
from aqtrack.data import ActionQualityData, load_configured
from aqtrack.errors import ConfigError, ResumeError
from aqtrack.loop import Trainer, build_trainer, fit, restore
from aqtrack.metrics import METRIC_KEYS
from aqtrack.report import REPORT_FILE, build_report, history_from_points, report_writer, write_report

log = logging.getLogger(__name__)

AUTO = "auto"
MLFLOW_RUN_ENV = "MLFLOW_RUN_ID"  # set by `mlflow run` for the run it created


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
    checkpoint_dir: Path | None  # where that checkpoint was downloaded


def train(resume: str | None = None, *, defaults_unset: bool = False, **settings: Any) -> TrainResult:
    """Train a new run, or resume one by id (or "auto": the newest unfinished run of the experiment).

    `settings` are Config fields by name, e.g. `train(rounds=1, epochs_per_round=5)`. When resuming,
    the run's own settings apply and only `config.RESUMABLE` ones (rounds, ...) may change;
    `defaults_unset` treats settings equal to their defaults as not given (what `mlflow run` needs).
    """
    client = tracking.connect()
    env_run = os.environ.get(MLFLOW_RUN_ENV) or None
    if resume == AUTO:
        # Under `mlflow run`, the experiment is the one MLflow put its run in.
        experiment_id = (
            client.get_run(env_run).info.experiment_id
            if env_run
            else tracking.find_experiment_id(client, settings.get("experiment", Config().run.experiment))
        )
        resume = tracking.latest_unfinished_run(client, experiment_id, exclude=env_run)
        log.info(
            "--resume auto: %s", f"continuing run {resume}" if resume else "no unfinished run, starting anew"
        )
    with tempfile.TemporaryDirectory(prefix="aqtrack-resume-") as tmp:
        start = _prepare(client, resume or None, settings, defaults_unset, Path(tmp))
        run_id = _open_run(client, start, env_run)
        with tracking.terminating(client, run_id):
            return _train_in_run(client, run_id, start)


def _prepare(client, resume: str | None, settings: dict[str, Any], defaults_unset: bool, tmp: Path) -> _Start:
    if resume:
        run = tracking.get_run(client, resume)
        path = tracking.download_artifact(client, resume, f"{ARTIFACT_DIR}/{LAST}", tmp)
        if path is None:
            raise ResumeError(
                f"--resume {resume}: the run has no {ARTIFACT_DIR}/{LAST} (it stopped before its first "
                "epoch ended, or was not made by aqtrack); start a new run instead"
            )
        state = load_checkpoint(path)
        cfg = resumed(Config.from_dict(state.config), settings, defaults_unset=defaults_unset)
        if cfg.train.total_epochs <= state.epoch:
            raise ResumeError(
                f"--resume {resume}: the run has trained {state.epoch} of {cfg.train.total_epochs} epochs "
                f"({run.info.status}); pass {flag('rounds')} above {cfg.train.rounds} to train longer"
            )
        state.config = cfg.to_dict()
    else:
        cfg = Config.from_dict(settings)
        state = None
    _check_writable(Path(cfg.run.output_dir))
    data = load_configured(cfg.data)
    trainer = build_trainer(cfg, data, torch.device("cpu"))
    if state is None:
        state = TrainState(config=cfg.to_dict(), model_spec=trainer.spec.to_dict())
    else:
        restore(trainer, state)
    return _Start(cfg, data, trainer, state, resume, tmp if resume else None)


def _open_run(client, start: _Start, env_run: str | None) -> str:
    """The run to train in: the resumed run itself, the run `mlflow run` made, or a new one."""
    source = start.source_run
    if source and env_run in (None, source):
        client.update_run(source, status="RUNNING", name=start.config.run.run_name or None)
        return source
    if env_run:
        return env_run
    experiment_id = tracking.experiment_id(client, start.config.run.experiment)
    run = client.create_run(experiment_id, run_name=start.config.run.run_name or None)
    return run.info.run_id


def _train_in_run(client, run_id: str, start: _Start) -> TrainResult:
    cfg, state, source = start.config, start.state, start.source_run
    stats = start.data.stats()
    tracker = tracking.MlflowTracker(client, run_id)
    tracker.log_params(cfg.to_dict())
    tracker.set_tags(_tags(client, run_id, cfg, start.data, source))
    tracker.log_json(stats, tracking.DATASET_STATS_ARTIFACT)
    if source and source != run_id:
        _carry_over(client, tracker, source, run_id, start.checkpoint_dir)
    tracker.skip = tracking.sync_history(client, run_id, state.history)
    state.run_id = run_id

    output_dir = Path(cfg.run.output_dir)
    report_hook = report_writer(tracker, output_dir, stats, run_id)
    fit(start.trainer, state, tracker, output_dir / "checkpoints" / run_id, on_epoch_end=[report_hook])
    return TrainResult(
        run_id=run_id,
        epochs=state.epoch,
        best_val_acc=state.best_val_acc,
        best_epoch=state.best_epoch,
        history=state.history,
        report_path=output_dir / REPORT_FILE,
        resumed_from=source,
    )


def _tags(client, run_id: str, cfg: Config, data: ActionQualityData, source: str | None) -> dict[str, str]:
    tags = {
        tracking.TAG_DATA_SOURCE: data.source,
        tracking.TAG_ROUNDS: str(cfg.train.rounds),
        "aqtrack.version": _version(),
    }
    if source == run_id:
        count = client.get_run(run_id).data.tags.get(tracking.TAG_RESUME_COUNT, "0")
        tags[tracking.TAG_RESUME_COUNT] = str(int(count) + 1)
    elif source:
        tags[tracking.TAG_RESUMED_FROM] = source
    return tags


def _carry_over(client, tracker: tracking.MlflowTracker, source: str, run_id: str, downloaded: Path) -> None:
    """Resumed into a new run (under `mlflow run`): give it the source's checkpoints and link the two."""
    tracker.log_artifact(downloaded / LAST, ARTIFACT_DIR)
    best = tracking.download_artifact(client, source, f"{ARTIFACT_DIR}/{BEST}", downloaded / "best")
    if best is not None:
        tracker.log_artifact(best, ARTIFACT_DIR)
    client.set_tag(source, tracking.TAG_CONTINUED_IN, run_id)


def rebuild_report(run_id: str, output_dir: Path) -> Path:
    """Rebuild `experiment_report.json` for any run from its MLflow metrics (plus its checkpoint's
    batch losses and dataset stats, where the run has them)."""
    client = tracking.connect()
    run = tracking.get_run(client, run_id, label="report")
    points = tracking.fetch_history(client, run_id, METRIC_KEYS)
    with tempfile.TemporaryDirectory(prefix="aqtrack-report-") as tmp:
        ckpt = tracking.download_artifact(client, run_id, f"{ARTIFACT_DIR}/{LAST}", Path(tmp))
        batch_source = load_checkpoint(ckpt).history if ckpt else None
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
