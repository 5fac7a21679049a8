"""Cross-validation by subject as nested MLflow runs, resumable as a whole: `aqtrack.cross_validate`.

    aqtrack cv --folds 5 [--jobs N] [any train setting]     aqtrack.cross_validate(folds="5", ...)
    aqtrack cv --resume PARENT_ID

One parent run holds the plan and the aggregate; each fold is a normal aqtrack run nested under it
(`mlflow.parentRunId`; tags `aqtrack.cv_parent` and `aqtrack.cv_fold`), trained by the same code as
`aqtrack train`, with the settings `--folds K --fold i` added: its test split is its fold, evaluated once
with the epoch that a validation split carved from the other folds chose (see `aqtrack.data.splits`). So a
fold is reproducible from its own config, and resumes as any run does.

The parent keeps no state of its own that a kill could tear: which folds are done is read from the fold
runs (found by their tags, never by name), and the aggregate is made from the FINISHED ones only, each
time it is made. A resume (`cv --resume`) skips finished folds, resumes an interrupted one from its
verified checkpoint (`train --resume`), starts a fold whose run holds no checkpoint again in a new run
(the empty one is deleted), starts the missing ones, then aggregates.

The aggregate, at step = the number of folds aggregated: the mean and sample standard deviation
(ddof=1, as papers report) of each fold's test_acc, test_balanced_acc and test_f1_macro, and the scores of
the pooled out-of-fold predictions (what each fold's best checkpoint predicted for its own fold, logged by
its finishing stage); the per-fold table, the predictions as CSV, the pooled confusion matrix and a
per-fold figure as artifacts (`aqtrack.jobs.cv_aggregate`).

`jobs` > 1 trains folds in that many worker processes (spawned; each trains whole folds with
1/jobs of torch's threads); this process aggregates. A fold's numbers depend on its torch thread count
(CPU kernels split their sums by thread), so `jobs` N matches `jobs` 1 run with as many threads per fold.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aqtrack import names
from aqtrack.config import CV_RESUMABLE, Config, check_values, config_fields, cv_resumed, parse_param, show
from aqtrack.data.dataset import FoldPlan, fold_plan
from aqtrack.errors import (
    AqtrackError,
    ConfigError,
    DataError,
    NoCheckpoint,
    ResumeError,
    TrackingLost,
    described,
)
from aqtrack.jobs.cv_aggregate import FoldResult, aggregate
from aqtrack.jobs.pipeline import Nest, adopt, aqtrack_version, check_writable, train_fold
from aqtrack.names import NOTE_TAG, RUN_NAME_TAG, TEST_ACC
from aqtrack.tracking import store
from aqtrack.tracking.describe import GENERATED_NAME_RE, cv_final_note, cv_start_note, run_name
from aqtrack.tracking.lock import run_lock, try_run_lock
from aqtrack.training.interrupts import stop_signals

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

RESUME_COMMAND = "aqtrack cv --resume"


@dataclass
class _Cv:
    """One cross-validation, as this process runs it: the store, the parent run, settings and folds."""

    client: Any
    parent: Any  # the parent run (an mlflow Run)
    config: Config  # the parent's settings (no `fold`)
    plan: FoldPlan
    tmp: Path  # this process's scratch directory

    @property
    def run_id(self) -> str:
        return self.parent.info.run_id


@dataclass
class CvResult:
    run_id: str  # the parent run
    folds_planned: int
    folds: list[FoldResult]  # the finished folds, in fold order: all that is aggregated
    scores: dict[str, float]  # cv_test_acc_mean, cv_test_acc_std, ..., cv_oof_acc, ...
    predictions: pd.DataFrame  # out of fold: sample_id, subject, fold, label, predicted, p_<class>
    failed: dict[int, str] = field(default_factory=dict)  # fold -> why it did not finish this time

    @property
    def folds_finished(self) -> int:
        return len(self.folds)


@dataclass(frozen=True)
class _FoldTask:
    """One fold to bring to FINISHED; plain values, so a worker process can take it."""

    parent_id: str
    fold: int
    settings: dict[str, Any]  # a new fold run's whole config
    given: dict[str, Any]  # what a resume of its run is given (CV_RESUMABLE settings passed to cv)


@dataclass(frozen=True)
class _FoldOutcome:
    fold: int
    run_id: str = ""
    error: str = ""  # why it did not finish ("": it did)
    lost: bool = False  # the tracking server went away


class FoldsFailed(AqtrackError):
    """Some folds did not finish (the others are aggregated); the parent is marked FAILED."""


def cross_validate(resume: str | None = None, *, jobs: int = 1, **settings: Any) -> CvResult:
    """Cross-validate: `folds="5"` (grouped, stratified 5-fold by subject) or `folds="loso"`, with any
    `train` setting; or continue the cross-validation `resume` (a parent run id). Returns the aggregate
    of the finished folds; when a fold failed the parent is marked FAILED and `failed` says why."""
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ConfigError(f"--jobs must be a whole number >= 1 (got {jobs!r})")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "aqtrack cv trains its folds in one process (or --jobs N workers), not under torchrun"
        )
    if "fold" in settings:
        raise ConfigError(
            "cv trains every fold; --fold is for `aqtrack train --folds K --fold N` (one fold)",
            setting="fold",
        )
    plan, cfg = _check_early(resume, settings)
    client = store.connect()
    env = store.env_run(client)
    with contextlib.ExitStack() as held, tempfile.TemporaryDirectory(prefix="aqtrack-cv-") as tmp:
        if resume:
            parent, cfg, plan = _reopen(client, resume, settings, env, held, Path(tmp))
        else:
            parent, cfg = _open(client, cfg, plan, env, held, Path(tmp))
        cv = _Cv(client, parent, cfg, plan, Path(tmp))
        try:
            with stop_signals(), store.terminating(client, cv.run_id, RESUME_COMMAND):
                result = _cross_validate(cv, jobs, settings)
                if result.failed:
                    raise FoldsFailed(_failure(result))
        except FoldsFailed:
            log.error("cv %s: %s", cv.run_id, _failure(result))
        return result


def _check_early(resume: str | None, settings: dict[str, Any]) -> tuple[FoldPlan | None, Config | None]:
    """Before the store is contacted: a new cross-validation's settings, data and every fold's splits;
    a resume's id and given settings (one by one: the run's own are read from it later)."""
    if resume:
        if not store.RUN_ID_RE.match(resume):
            raise ResumeError(f"cv --resume {resume!r}: not a run id (32 lowercase hex characters)")
        check_values(settings)
        return None, None
    cfg = Config.from_dict(settings)
    if not cfg.data.folds:
        raise ConfigError(
            "cv needs --folds K (grouped, stratified K-fold by subject) or --folds loso (one fold per "
            "subject)",
            setting="folds",
        )
    check_writable(Path(cfg.run.output_dir))
    return _plan(cfg), cfg


def _plan(cfg: Config) -> FoldPlan:
    """The folds, each checked to make its splits (a fold that cannot is refused before anything runs)."""
    plan = fold_plan(cfg.data)
    for fold in range(1, plan.k + 1):
        plan.data(fold, announce=False)
    return plan


# --- the parent run ---------------------------------------------------------------------------------------


def _open(client, cfg: Config, plan: FoldPlan, env, held: contextlib.ExitStack, tmp: Path):
    """A new parent run (MLFLOW_RUN_ID's, under `mlflow run`, when it holds nothing yet), locked, with
    its params, tags, description, data statistics and the fold of every sample."""
    if env is not None and adopt(client, env, held):
        run = env
    else:
        if env is not None:
            log.warning(
                "%s=%s names a run that holds a training already; the cross-validation goes in a new run",
                names.MLFLOW_RUN_ENV,
                env.info.run_id,
            )
        experiment_id = (
            env.info.experiment_id if env else store.get_or_create_experiment(client, cfg.run.experiment)
        )
        run = store.create_run(client, experiment_id, cfg.run.run_name or None)
        held.enter_context(run_lock(client.tracking_uri, run.info.run_id))
    run_id = run.info.run_id
    cfg = cfg.replace(experiment=client.get_experiment(run.info.experiment_id).name)
    tracker = store.MlflowTracker(client, run_id, patience=cfg.run.tracking_patience)
    tracker.log_params({k: show(v) for k, v in cfg.to_dict().items() if k != "fold"})
    tags = {
        names.TAG_CV: cfg.data.folds,
        names.TAG_CV_PLANNED: str(plan.k),
        names.TAG_CV_FINISHED: "0",
        names.TAG_DATA_SOURCE: plan.pool.source,
        names.TAG_VERSION: aqtrack_version(),
        NOTE_TAG: cv_start_note(cfg, plan, run_id),
        **_owner(),
    }
    if not cfg.run.run_name and GENERATED_NAME_RE.match(run.info.run_name or ""):
        tags[RUN_NAME_TAG] = f"cv{cfg.data.folds}-{run_name(cfg, run.info.run_name)}"
    tracker.set_tags(tags)
    tracker.log_json(_pool_stats(plan), names.DATASET_STATS_ARTIFACT)
    tracker.log_artifact(_assignment_csv(plan, tmp), names.CV_DIR)
    tracker.drain()
    log.info("cv %s: %d folds, %s", run_id, plan.k, _method(plan))
    return client.get_run(run_id), cfg


def _reopen(client, run_id: str, given: dict[str, Any], env, held: contextlib.ExitStack, tmp: Path):
    """The parent run of the cross-validation to continue, locked and RUNNING again, its settings with
    the resumable ones given, and its folds (checked to be the ones it started with)."""
    run = store.get_run(client, run_id, label="cv --resume")
    if names.TAG_CV not in run.data.tags:
        raise ResumeError(
            f"cv --resume {run_id}: not a cross-validation run (no {names.TAG_CV} tag); continue a "
            f"training with `aqtrack train --resume {run_id}`"
        )
    held.enter_context(run_lock(client.tracking_uri, run_id))
    saved = {k: parse_param(k, v) for k, v in run.data.params.items() if k in _SETTINGS and k != "fold"}
    cfg = cv_resumed(Config.from_dict(saved), given)
    _check_resumable(client, run, given)
    plan = _plan(cfg)
    _check_same_folds(client, run, plan, tmp)
    if env is not None and env.info.run_id != run_id:
        log.warning(
            "%s=%s: cv --resume continues run %s itself; that run is left empty",
            names.MLFLOW_RUN_ENV,
            env.info.run_id,
            run_id,
        )
        client.set_tag(env.info.run_id, NOTE_TAG, f"Continued the cross-validation in run `{run_id}`.")
    client.update_run(run_id, status="RUNNING", name=given.get("run_name") or None)
    if names.TAG_ERROR in run.data.tags:  # the error of an earlier attempt; this one may end otherwise
        client.delete_tag(run_id, names.TAG_ERROR)
    store.log_points(client, run_id, {}, 0, _owner())
    return client.get_run(run_id), cfg, plan


def _check_resumable(client, run, given: dict[str, Any]) -> None:
    run_id = run.info.run_id
    busy = store.running_on_another_machine(run)
    if busy:
        raise ResumeError(f"cv --resume {run_id}: the run is {busy}")
    experiment = client.get_experiment(run.info.experiment_id).name
    if given.get("experiment", experiment) != experiment:
        raise ResumeError(
            f"cv --resume {run_id}: the run is in experiment {experiment!r}, not {given['experiment']!r}"
        )
    planned = int(run.data.tags.get(names.TAG_CV_PLANNED, "0"))
    done = [f for f, r in store.cv_folds(client, run).items() if r.info.status == "FINISHED"]
    if run.info.status == "FINISHED" and len(done) >= planned:
        raise ResumeError(f"cv --resume {run_id}: all {planned} folds finished; there is nothing to resume")


def _check_same_folds(client, run, plan: FoldPlan, tmp: Path) -> None:
    """The folds the data makes now are the ones the cross-validation started with (its
    fold_assignment.csv): finished folds were trained and tested on those."""
    import pandas as pd

    path = store.download_if_present(client, run.info.run_id, names.CV_ASSIGNMENT, tmp / "assignment")
    if path is None:  # stopped before it was logged: no fold has trained yet
        return
    started = pd.read_csv(path, dtype={"sample_id": str}, keep_default_na=False)
    now = [str(s) for s in plan.pool.samples.sample_ids]
    if started["sample_id"].tolist() != now or started["fold"].tolist() != plan.fold_of().tolist():
        raise DataError(
            f"cv --resume {run.info.run_id}: {plan.pool.source} makes other folds than the cross-validation "
            f"started with ({names.CV_ASSIGNMENT} in the run): the data changed; start a new "
            "cross-validation"
        )


_SETTINGS = frozenset(name for _, name, _ in config_fields())


def _owner() -> dict[str, str]:
    """Which process holds the parent, and that it is alive (see `store.held_elsewhere`)."""
    return {
        names.TAG_OWNER: f"{socket.gethostname()}:{os.getpid()}",
        names.TAG_HEARTBEAT: str(int(time.time())),
    }


def _pool_stats(plan: FoldPlan) -> dict:
    pool = plan.pool
    return {
        "source": pool.source,
        "num_classes": len(pool.class_names),
        "class_names": list(pool.class_names),
        "channels": len(pool.channel_names),
        "channel_names": list(pool.channel_names),
        "all": pool.samples.stats(pool.class_names),
        "cv": {"folds": plan.k, "method": plan.method, "val_fraction": plan.val_fraction, "seed": plan.seed},
        "missing": {"policy": pool.missing_policy, "filled_values": int(pool.filled_values)},
        "notes": list(pool.notes),
    }


def _assignment_csv(plan: FoldPlan, tmp: Path) -> Path:
    """`fold_assignment.csv`: the fold whose test split holds each sample, every sample once."""
    import pandas as pd

    s, class_names = plan.pool.samples, plan.pool.class_names
    path = tmp / Path(names.CV_ASSIGNMENT).name
    pd.DataFrame(
        {
            "sample_id": s.sample_ids,
            "subject": s.subjects if s.subjects is not None else "",
            "label": [class_names[k] for k in s.y],
            "fold": plan.fold_of(),
        }
    ).to_csv(path, index=False)
    return path


def _method(plan: FoldPlan) -> str:
    from aqtrack.data.splits import CV_METHODS

    return CV_METHODS[plan.method]


# --- the folds ----------------------------------------------------------------------------------------


def _cross_validate(cv: _Cv, jobs: int, given: dict[str, Any]) -> CvResult:
    """Bring every fold to FINISHED (skipping those that are), then aggregate the finished ones."""
    k = cv.plan.k
    base = {name: v for name, v in cv.config.to_dict().items() if name != "fold"}
    resumable = {name: v for name, v in given.items() if name in CV_RESUMABLE - {"run_name", "experiment"}}
    folds = store.cv_folds(cv.client, cv.parent)
    todo = [
        _FoldTask(cv.run_id, i, {**base, "fold": i, "run_name": f"fold-{i}-of-{k}"}, resumable)
        for i in range(1, k + 1)
        if i not in folds or folds[i].info.status != "FINISHED"
    ]
    log.info("cv %s: %d of %d folds to train", cv.run_id, len(todo), k)
    runs = _in_workers(todo, jobs) if jobs > 1 and len(todo) > 1 else (_run_fold(cv.client, t) for t in todo)
    failed: dict[int, str] = {}
    lost = ""
    for outcome in runs:
        if outcome.error:
            failed[outcome.fold] = outcome.error
            lost = lost or (outcome.error if outcome.lost else "")
        _fold_done(cv.client, cv.parent, outcome)
    if lost:
        again = f"`{RESUME_COMMAND} {cv.run_id}` continues once it is back"
        raise TrackingLost(f"cv {cv.run_id}: {lost}; {again}")
    result = _aggregate(cv)
    result.failed = failed
    return result


def _run_fold(client, task: _FoldTask) -> _FoldOutcome:
    """Train one fold to FINISHED: resume its run, or start it (again) in a new one. Any failure but a
    stop (Ctrl-C, SIGTERM) is the fold's outcome: the other folds go on."""
    parent = client.get_run(task.parent_id)
    run = store.cv_folds(client, parent).get(task.fold)
    nest = Nest(task.parent_id, {names.TAG_CV_PARENT: task.parent_id, names.TAG_CV_FOLD: str(task.fold)})
    try:
        if run is not None and run.info.status == "FINISHED":
            return _FoldOutcome(task.fold, run.info.run_id)
        if run is not None:
            try:
                return _FoldOutcome(task.fold, train_fold(nest, resume=run.info.run_id, **task.given).run_id)
            except NoCheckpoint as e:
                _discard(client, run, e)
        return _FoldOutcome(task.fold, train_fold(nest, **{**task.settings, **task.given}).run_id)
    except TrackingLost as e:
        return _FoldOutcome(task.fold, error=str(e), lost=True)
    except Exception as e:  # the fold failed (its run says so); the others go on
        if not isinstance(e, AqtrackError):
            log.exception("cv %s: fold %d failed", task.parent_id, task.fold)
        return _FoldOutcome(task.fold, error=described(e)[:500])


def _discard(client, run, why: NoCheckpoint) -> None:
    """A fold run with no checkpoint to continue from holds nothing worth keeping (metrics are logged
    only with their checkpoint): it is deleted (MLflow's soft delete) and the fold starts afresh."""
    run_id = run.info.run_id
    with contextlib.ExitStack() as stack:
        if not try_run_lock(stack, client.tracking_uri, run_id):
            raise ResumeError(f"fold run {run_id} is being trained by another process on this machine")
        log.warning(
            "cv: fold %s: its run %s holds no checkpoint to continue from; it is deleted and the fold "
            "starts again in a new run",
            run.data.tags.get(names.TAG_CV_FOLD),
            run_id,
        )
        log.debug("%s", why)
        store.delete_run(client, run_id)


def _fold_done(client, parent, outcome: _FoldOutcome) -> None:
    """Tell the parent: a fold ended (the count of FINISHED folds, and the heartbeat with it)."""
    parent_id = parent.info.run_id
    if outcome.error:
        log.error("cv %s: fold %d did not finish: %s", parent_id, outcome.fold, outcome.error)
    else:
        run = client.get_run(outcome.run_id)
        test_acc = run.data.metrics.get(TEST_ACC, float("nan"))
        log.info(
            "cv %s: fold %d finished (run %s): test_acc %.4f",
            parent_id,
            outcome.fold,
            run.info.run_id,
            test_acc,
        )
    finished = sum(r.info.status == "FINISHED" for r in store.cv_folds(client, parent).values())
    store.log_points(client, parent_id, {}, 0, {names.TAG_CV_FINISHED: str(finished), **_owner()})


def _failure(result: CvResult) -> str:
    reasons = "; ".join(f"fold {fold}: {why}" for fold, why in sorted(result.failed.items()))
    return (
        f"{len(result.failed)} fold(s) did not finish ({reasons}); {result.folds_finished} of "
        f"{result.folds_planned} are aggregated; `{RESUME_COMMAND} {result.run_id}` trains the others again"
    )


# --- worker processes ---------------------------------------------------------------------------------


def _in_workers(tasks: list[_FoldTask], jobs: int) -> Iterator[_FoldOutcome]:
    """The tasks' outcomes, as `jobs` spawned worker processes finish them (each trains whole folds).

    The workers run in their own process group, so a Ctrl-C reaches this process alone: on any stop
    here, each worker gets one SIGTERM (it publishes its epoch and marks its fold KILLED, as `train`
    does) and is waited for. A worker also stops by itself once this process is gone (SIGKILL)."""
    import multiprocessing
    import queue

    import torch

    context = multiprocessing.get_context("spawn")
    todo, done = context.Queue(), context.Queue()
    n = min(jobs, len(tasks))
    for task in [*tasks, *[None] * n]:
        todo.put(task)
    threads = max(1, torch.get_num_threads() // n)
    level = logging.getLogger("aqtrack").getEffectiveLevel()
    workers = [
        context.Process(
            target=_worker, args=(todo, done, threads, level, os.getpid()), name=f"aqtrack-cv-{i}"
        )
        for i in range(n)
    ]
    log.info("cv: %d worker processes, %d torch thread(s) each", n, threads)
    for worker in workers:
        worker.start()
    waiting = {task.fold for task in tasks}
    try:
        while waiting:
            try:
                outcome = done.get(timeout=1.0)
            except queue.Empty:
                if not any(w.is_alive() for w in workers):  # a worker died without a word (SIGKILL, OOM)
                    for fold in sorted(waiting):
                        yield _FoldOutcome(fold, error="its worker process died")
                    return
                continue
            waiting.discard(outcome.fold)
            yield outcome
    except BaseException:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()  # SIGTERM: stops as `train` does on SIGTERM
        raise
    finally:
        for worker in workers:
            worker.join()


def _worker(todo, done, threads: int, level: int, main_pid: int) -> None:
    """A worker process: train the folds it takes from `todo` until a None, report each to `done`."""
    import psutil
    import torch

    from aqtrack.training.interrupts import stop_when_gone

    os.setpgrp()  # out of the terminal's process group: the main process decides when to stop
    torch.set_num_threads(threads)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("aqtrack")
    logger.handlers[:] = [handler]
    logger.setLevel(max(level, logging.WARNING))  # progress lines of several folds at once would mingle
    logger.propagate = False
    client = store.connect()
    with stop_when_gone(psutil.Process(main_pid), "the `aqtrack cv` process"):
        while (task := todo.get()) is not None:
            try:
                done.put(_run_fold(client, task))
            except KeyboardInterrupt:  # SIGTERM from the main process: the fold is marked KILLED
                return


# --- the aggregate --------------------------------------------------------------------------------------


def _aggregate(cv: _Cv) -> CvResult:
    """The finished folds (only those) aggregated into the parent, and its description and tags."""
    done = aggregate(cv.client, cv.parent, cv.plan, cv.tmp)
    rows = [f.row() for f in done.folds]
    note = cv_final_note(cv_start_note(cv.config, cv.plan, cv.run_id), cv.plan.k, rows, done.scores)
    tags = {names.TAG_CV_FINISHED: str(len(rows)), NOTE_TAG: note}
    store.log_points(cv.client, cv.run_id, {}, 0, tags)
    return CvResult(cv.run_id, cv.plan.k, done.folds, done.scores, done.predictions)
