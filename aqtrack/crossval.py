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
the pooled out-of-fold predictions (each fold's best checkpoint on its own fold); the per-fold table, the
predictions as CSV, the pooled confusion matrix and a per-fold figure as artifacts.

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

import numpy as np

from aqtrack import exports, tracking
from aqtrack.config import CV_RESUMABLE, Config, check_values, config_fields, cv_resumed, parse_param, show
from aqtrack.data import FoldPlan, fold_plan
from aqtrack.describe import GENERATED_NAME_RE, NOTE_TAG, RUN_NAME_TAG, cv_final_note, cv_start_note, run_name
from aqtrack.errors import AqtrackError, ConfigError, NoCheckpoint, ResumeError, TrackingLost
from aqtrack.interrupts import stop_signals
from aqtrack.lock import run_lock, try_run_lock
from aqtrack.metrics import (
    CV_FOLDS_FINISHED,
    CV_MEAN,
    CV_OOF_ACC,
    CV_OOF_BALANCED_ACC,
    CV_OOF_F1_MACRO,
    CV_STD,
    TEST_ACC,
    TEST_KEYS,
    confusion_counts,
    scores,
)
from aqtrack.pipeline import Nest, adopt, aqtrack_version, check_writable, checkpoint_dir, train_fold

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

RESUME_COMMAND = "aqtrack cv --resume"


@dataclass(frozen=True)
class FoldResult:
    """One finished fold, as the parent aggregates it: what its run measured on its test split."""

    fold: int
    run_id: str
    subjects: tuple[str, ...]  # held out in this fold (empty without subjects)
    n: int  # test samples
    test_acc: float
    test_balanced_acc: float
    test_f1_macro: float
    best_epoch: int

    def row(self) -> dict[str, Any]:
        """A row of the per-fold table."""
        return {
            "fold": self.fold,
            "run_id": self.run_id,
            "subjects": ",".join(self.subjects),
            "n_subjects": len(self.subjects),
            "n": self.n,
            TEST_KEYS[0]: self.test_acc,
            TEST_KEYS[1]: self.test_balanced_acc,
            TEST_KEYS[2]: self.test_f1_macro,
            "best_epoch": self.best_epoch,
        }


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
    client = tracking.connect()
    env = tracking.env_run(client)
    with contextlib.ExitStack() as held, tempfile.TemporaryDirectory(prefix="aqtrack-cv-") as tmp:
        if resume:
            parent, cfg, plan = _reopen(client, resume, settings, env, held)
        else:
            parent, cfg = _open(client, cfg, plan, env, held, Path(tmp))
        parent_id = parent.info.run_id
        try:
            with stop_signals(), tracking.terminating(client, parent_id, RESUME_COMMAND):
                result = _cross_validate(client, parent, cfg, plan, jobs, settings, Path(tmp))
                if result.failed:
                    raise FoldsFailed(_failure(result))
        except FoldsFailed:
            log.error("cv %s: %s", parent_id, _failure(result))
        return result


def _check_early(resume: str | None, settings: dict[str, Any]) -> tuple[FoldPlan | None, Config | None]:
    """Before the store is contacted: a new cross-validation's settings, data and every fold's splits;
    a resume's id and given settings (one by one: the run's own are read from it later)."""
    if resume:
        if not tracking.RUN_ID_RE.match(resume):
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
                tracking.MLFLOW_RUN_ENV,
                env.info.run_id,
            )
        experiment_id = env.info.experiment_id if env else tracking.experiment_id(client, cfg.run.experiment)
        run = tracking.create_run(client, experiment_id, cfg.run.run_name or None)
        held.enter_context(run_lock(client.tracking_uri, run.info.run_id))
    run_id = run.info.run_id
    cfg = cfg.replace(experiment=client.get_experiment(run.info.experiment_id).name)
    tracker = tracking.MlflowTracker(client, run_id, patience=cfg.run.tracking_patience)
    tracker.log_params({k: show(v) for k, v in cfg.to_dict().items() if k != "fold"})
    tags = {
        tracking.TAG_CV: cfg.data.folds,
        tracking.TAG_CV_PLANNED: str(plan.k),
        tracking.TAG_CV_FINISHED: "0",
        tracking.TAG_DATA_SOURCE: plan.pool.source,
        "aqtrack.version": aqtrack_version(),
        NOTE_TAG: cv_start_note(cfg, plan, run_id),
        **_owner(),
    }
    if not cfg.run.run_name and GENERATED_NAME_RE.match(run.info.run_name or ""):
        tags[RUN_NAME_TAG] = f"cv{cfg.data.folds}-{run_name(cfg, run.info.run_name)}"
    tracker.set_tags(tags)
    tracker.log_json(_pool_stats(plan), tracking.DATASET_STATS_ARTIFACT)
    tracker.log_artifact(_assignment_csv(plan, tmp), exports.CV_DIR)
    tracker.drain()
    log.info("cv %s: %d folds, %s", run_id, plan.k, _method(plan))
    return client.get_run(run_id), cfg


def _reopen(client, run_id: str, given: dict[str, Any], env, held: contextlib.ExitStack):
    """The parent run of the cross-validation to continue, locked and RUNNING again, and its settings
    with the resumable ones given."""
    run = tracking.get_run(client, run_id, label="cv --resume")
    if tracking.TAG_CV not in run.data.tags:
        raise ResumeError(
            f"cv --resume {run_id}: not a cross-validation run (no {tracking.TAG_CV} tag); continue a "
            f"training with `aqtrack train --resume {run_id}`"
        )
    held.enter_context(run_lock(client.tracking_uri, run_id))
    busy = tracking.running_on_another_machine(run)
    if busy:
        raise ResumeError(f"cv --resume {run_id}: the run is {busy}")
    experiment = client.get_experiment(run.info.experiment_id).name
    if given.get("experiment", experiment) != experiment:
        raise ResumeError(
            f"cv --resume {run_id}: the run is in experiment {experiment!r}, not {given['experiment']!r}"
        )
    saved = {k: parse_param(k, v) for k, v in run.data.params.items() if k in _SETTINGS and k != "fold"}
    cfg = cv_resumed(Config.from_dict(saved), given)
    plan = _plan(cfg)
    folds = tracking.cv_folds(client, run)
    planned = int(run.data.tags.get(tracking.TAG_CV_PLANNED, "0"))
    done = [f for f, r in folds.items() if r.info.status == "FINISHED"]
    if run.info.status == "FINISHED" and len(done) >= planned:
        raise ResumeError(f"cv --resume {run_id}: all {planned} folds finished; there is nothing to resume")
    if env is not None and env.info.run_id != run_id:
        log.warning(
            "%s=%s: cv --resume continues run %s itself; that run is left empty",
            tracking.MLFLOW_RUN_ENV,
            env.info.run_id,
            run_id,
        )
        client.set_tag(env.info.run_id, NOTE_TAG, f"Continued the cross-validation in run `{run_id}`.")
    client.update_run(run_id, status="RUNNING", name=given.get("run_name") or None)
    if tracking.TAG_ERROR in run.data.tags:  # the error of an earlier attempt; this one may end otherwise
        client.delete_tag(run_id, tracking.TAG_ERROR)
    tracking.log_points(client, run_id, {}, 0, _owner())
    return client.get_run(run_id), cfg, plan


_SETTINGS = frozenset(name for _, name, _ in config_fields())


def _owner() -> dict[str, str]:
    """Which process holds the parent, and that it is alive (see `tracking.held_elsewhere`)."""
    return {
        tracking.TAG_OWNER: f"{socket.gethostname()}:{os.getpid()}",
        tracking.TAG_HEARTBEAT: str(int(time.time())),
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

    s, names = plan.pool.samples, plan.pool.class_names
    path = tmp / Path(exports.CV_ASSIGNMENT).name
    pd.DataFrame(
        {
            "sample_id": s.sample_ids,
            "subject": s.subjects if s.subjects is not None else "",
            "label": [names[k] for k in s.y],
            "fold": plan.fold_of(),
        }
    ).to_csv(path, index=False)
    return path


def _method(plan: FoldPlan) -> str:
    from aqtrack.data.splits import CV_METHODS

    return CV_METHODS[plan.method]


# --- the folds ----------------------------------------------------------------------------------------


def _cross_validate(
    client, parent, cfg: Config, plan: FoldPlan, jobs: int, given: dict, tmp: Path
) -> CvResult:
    """Bring every fold to FINISHED (skipping those that are), then aggregate the finished ones."""
    parent_id = parent.info.run_id
    base = {k: v for k, v in cfg.to_dict().items() if k != "fold"}
    resumable = {k: v for k, v in given.items() if k in CV_RESUMABLE - {"run_name", "experiment"}}
    folds = tracking.cv_folds(client, parent)
    todo = [
        _FoldTask(parent_id, i, {**base, "fold": i, "run_name": f"fold-{i}-of-{plan.k}"}, resumable)
        for i in range(1, plan.k + 1)
        if i not in folds or folds[i].info.status != "FINISHED"
    ]
    log.info("cv %s: %d of %d folds to train", parent_id, len(todo), plan.k)
    runs = _in_workers(todo, jobs) if jobs > 1 and len(todo) > 1 else (_run_fold(client, t) for t in todo)
    failed: dict[int, str] = {}
    lost = ""
    for outcome in runs:
        if outcome.error:
            failed[outcome.fold] = outcome.error
            lost = lost or (outcome.error if outcome.lost else "")
        _fold_done(client, parent, outcome)
    if lost:
        raise TrackingLost(
            f"cv {parent_id}: {lost}; `{RESUME_COMMAND} {parent_id}` continues once it is back"
        )
    result = _aggregate(client, parent, cfg, plan, tmp)
    result.failed = failed
    return result


def _run_fold(client, task: _FoldTask) -> _FoldOutcome:
    """Train one fold to FINISHED: resume its run, or start it (again) in a new one. Any failure but a
    stop (Ctrl-C, SIGTERM) is the fold's outcome: the other folds go on."""
    parent = client.get_run(task.parent_id)
    run = tracking.cv_folds(client, parent).get(task.fold)
    nest = Nest(
        task.parent_id, {tracking.TAG_CV_PARENT: task.parent_id, tracking.TAG_CV_FOLD: str(task.fold)}
    )
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
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return _FoldOutcome(task.fold, error=f"{type(e).__name__}: {first}"[:500])


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
            run.data.tags.get(tracking.TAG_CV_FOLD),
            run_id,
        )
        log.debug("%s", why)
        tracking.delete_run(client, run_id)


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
    finished = sum(r.info.status == "FINISHED" for r in tracking.cv_folds(client, parent).values())
    tracking.log_points(client, parent_id, {}, 0, {tracking.TAG_CV_FINISHED: str(finished), **_owner()})


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

    from aqtrack.interrupts import stop_when_gone

    os.setpgrp()  # out of the terminal's process group: the main process decides when to stop
    torch.set_num_threads(threads)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("aqtrack")
    logger.handlers[:] = [handler]
    logger.setLevel(max(level, logging.WARNING))  # progress lines of several folds at once would mingle
    logger.propagate = False
    client = tracking.connect()
    with stop_when_gone(psutil.Process(main_pid), "the `aqtrack cv` process"):
        while (task := todo.get()) is not None:
            try:
                done.put(_run_fold(client, task))
            except KeyboardInterrupt:  # SIGTERM from the main process: the fold is marked KILLED
                return


# --- the aggregate --------------------------------------------------------------------------------------


def _aggregate(client, parent, cfg: Config, plan: FoldPlan, tmp: Path) -> CvResult:
    """Aggregate the FINISHED folds (only those) into the parent: metrics, table, predictions, figures."""
    import pandas as pd

    finished = {
        f: r for f, r in sorted(tracking.cv_folds(client, parent).items()) if r.info.status == "FINISHED"
    }
    folds, parts = [], []
    for fold, run in finished.items():
        result, predictions = _fold_result(client, run, fold, cfg, plan, tmp)
        folds.append(result)
        parts.append(predictions)
    predictions = pd.concat(parts).sort_index() if parts else _empty_predictions(plan)
    result = CvResult(parent.info.run_id, plan.k, folds, _scores(folds, predictions, plan), predictions)
    if folds:
        _log_scores(client, result, tmp)
        _log_predictions(client, result, plan, tmp)
    note = cv_final_note(
        cv_start_note(cfg, plan, result.run_id), plan.k, [f.row() for f in folds], result.scores
    )
    tags = {tracking.TAG_CV_FINISHED: str(len(folds)), NOTE_TAG: note}
    tracking.log_points(client, result.run_id, {}, 0, tags)
    return result


def _fold_result(
    client, run, fold: int, cfg: Config, plan: FoldPlan, tmp: Path
) -> tuple[FoldResult, pd.DataFrame]:
    """What the fold's run measured on its test split, and its out-of-fold predictions: its verified best
    checkpoint on its fold's samples (the network its test scores come from)."""
    from aqtrack.finish import network_of
    from aqtrack.model import embed
    from aqtrack.resume import find_best

    run_id = run.info.run_id
    best = find_best(
        client, run_id, checkpoint_dir(cfg.run.output_dir, run_id), tmp / run_id, label=f"fold {fold}"
    )
    test = plan.pool.samples.select(plan.tests[fold - 1])
    _, logits = embed(network_of(best.state), test.x, test.lengths)
    metrics = run.data.metrics
    result = FoldResult(
        fold=fold,
        run_id=run_id,
        subjects=tuple(sorted({str(s) for s in test.subjects})) if test.subjects is not None else (),
        n=len(test),
        test_acc=metrics.get(TEST_KEYS[0], float("nan")),
        test_balanced_acc=metrics.get(TEST_KEYS[1], float("nan")),
        test_f1_macro=metrics.get(TEST_KEYS[2], float("nan")),
        best_epoch=best.state.epoch,
    )
    predicted = logits.argmax(axis=1)
    if float(np.mean(predicted == test.y)) != result.test_acc:
        log.warning("cv: fold %d: its best checkpoint now scores otherwise than its run's test_acc", fold)
    return result, _predictions(plan, fold, logits)


def _predictions(plan: FoldPlan, fold: int, logits: np.ndarray) -> pd.DataFrame:
    """One row per sample of the fold, indexed by its position in the data."""
    import pandas as pd

    from aqtrack.predictions import PROBABILITY_PREFIX, softmax

    index = plan.tests[fold - 1]
    s, names = plan.pool.samples, plan.pool.class_names
    probabilities = softmax(logits)
    table = pd.DataFrame(
        {
            "sample_id": s.sample_ids[index],
            "subject": s.subjects[index] if s.subjects is not None else "",
            "fold": fold,
            "label": [names[k] for k in s.y[index]],
            "predicted": [names[k] for k in logits.argmax(axis=1)],
        },
        index=index,
    )
    for k, name in enumerate(names):
        table[PROBABILITY_PREFIX + name] = probabilities[:, k]
    return table


def _empty_predictions(plan: FoldPlan) -> pd.DataFrame:
    import pandas as pd

    from aqtrack.predictions import PROBABILITY_PREFIX

    columns = ["sample_id", "subject", "fold", "label", "predicted"]
    return pd.DataFrame(columns=columns + [PROBABILITY_PREFIX + n for n in plan.pool.class_names])


def _scores(folds: list[FoldResult], predictions: pd.DataFrame, plan: FoldPlan) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; from 2 folds on) of each test score over the folds,
    and the scores of the pooled out-of-fold predictions."""
    if not folds:
        return {}
    out: dict[str, float] = {CV_FOLDS_FINISHED: float(len(folds))}
    for key in TEST_KEYS:
        values = np.array([getattr(f, key) for f in folds], dtype=np.float64)
        out[CV_MEAN[key]] = float(values.mean())
        if len(values) > 1:
            out[CV_STD[key]] = float(values.std(ddof=1))
    index = {name: k for k, name in enumerate(plan.pool.class_names)}
    y = predictions["label"].map(index).to_numpy()
    pooled = scores(confusion_counts(y, predictions["predicted"].map(index).to_numpy(), len(index)))
    out |= {
        CV_OOF_ACC: pooled["acc"],
        CV_OOF_BALANCED_ACC: pooled["balanced_acc"],
        CV_OOF_F1_MACRO: pooled["f1_macro"],
    }
    return out


def _log_scores(client, result: CvResult, tmp: Path) -> None:
    """The aggregate metrics at step = the number of folds aggregated (each once), and the per-fold
    table: MLflow appends to a logged table, so only the rows of folds it lacks are logged."""
    step, run_id = result.folds_finished, result.run_id
    have = {k for k in result.scores if step in tracking.metric_steps(client, run_id, k)}
    tracking.log_points(client, run_id, {k: v for k, v in result.scores.items() if k not in have}, step, {})
    logged = exports.read_table(client, run_id, exports.CV_FOLDS_TABLE, tmp / "table") or {"fold": []}
    rows = [f.row() for f in result.folds if f.fold not in set(logged["fold"])]
    if rows:
        exports.log_table(client, run_id, {k: [r[k] for r in rows] for k in rows[0]}, exports.CV_FOLDS_TABLE)


def _log_predictions(client, result: CvResult, plan: FoldPlan, tmp: Path) -> None:
    """The out-of-fold predictions (CSV, in the data's order), their confusion matrix and the folds'
    figure; each replaces the one an earlier aggregate logged."""
    from aqtrack.plots import confusion_matrix_figure, cv_folds_figure

    path = tmp / Path(exports.CV_PREDICTIONS).name
    result.predictions.to_csv(path, index=False)
    client.log_artifact(result.run_id, str(path), exports.CV_DIR)
    names = plan.pool.class_names
    index = {name: k for k, name in enumerate(names)}
    p = result.predictions
    counts = confusion_counts(
        p["label"].map(index).to_numpy(), p["predicted"].map(index).to_numpy(), len(names)
    )
    title = f"out-of-fold predictions of {result.folds_finished} of {plan.k} folds (run {result.run_id[:8]})"
    exports.log_figure(
        client, result.run_id, confusion_matrix_figure(counts, names, title=title), exports.CV_CONFUSION
    )
    folds = [f.fold for f in result.folds]
    by_key = {key: [getattr(f, key) for f in result.folds] for key in TEST_KEYS}
    figure = cv_folds_figure(folds, by_key, title=f"test scores by fold (run {result.run_id[:8]})")
    exports.log_figure(client, result.run_id, figure, exports.CV_FOLDS_FIGURE)
