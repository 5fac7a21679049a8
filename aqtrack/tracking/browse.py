"""Browsing runs from Python and the shell: `aqtrack runs` (a table) and `aqtrack show RUN_ID`.

import aqtrack
aqtrack.runs_table()                  # pandas.DataFrame, newest run first
print(aqtrack.show_run(run_id))       # what `aqtrack show` prints
"""

from __future__ import annotations

import datetime
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aqtrack import names
from aqtrack.config import Config
from aqtrack.errors import ConfigError
from aqtrack.names import (
    CHECKPOINT_EPOCH_TAG,
    CV_MEAN,
    CV_STD,
    GRAD_NORM,
    LR,
    METRIC_KEYS,
    SVM_VAL_ACC,
    SVM_VAL_F1,
    TEST_ACC,
    TEST_BALANCED_ACC,
    TEST_F1_MACRO,
    TEST_KEYS,
    VAL_ACC,
)
from aqtrack.tracking import exports, store

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ("run_id", "name", "status", "epochs", "total_epochs", "select_by", "best_score", "best_epoch")
COLUMNS += ("best_val_acc", *TEST_KEYS, "grad_norm", "lr", "resumable", "origin", "started")
# A cross-validation's parent: its folds finished / planned; its test scores are then the means over the
# finished folds and STD_COLUMNS their sample standard deviations. `aqtrack show` lists its fold runs.
STD_COLUMNS = {key: f"{key}_std" for key in TEST_KEYS}
COLUMNS += ("folds_finished", "folds_planned", *STD_COLUMNS.values())
# How `aqtrack runs` heads the test scores: short, so the table fits a terminal.
TEST_HEADERS = {TEST_ACC: "test_acc", TEST_BALANCED_ACC: "test_bal_acc", TEST_F1_MACRO: "test_f1"}
HIDDEN_TAGS = (names.TAG_HEARTBEAT, names.TAG_OWNER)  # bookkeeping, not for people


def runs_table(experiment: str | None = None, *, all_experiments: bool = False) -> pd.DataFrame:
    """One row per run of `experiment` (default: aqtrack's), or of every experiment, newest first:
    status, epochs done and planned, the best epoch (by the run's `select_by` on validation: its score,
    and val_acc there), the test scores (held out, evaluated once from the best epoch), the last
    grad_norm and lr, whether (and how) it can be resumed, where it came from and when it started."""
    import pandas as pd

    client = store.connect(existing=True)
    ids = _experiment_ids(client, experiment, all_experiments)
    # `aqtrack svm` refits and a cross-validation's folds are listed with their run by `aqtrack show`.
    nested = (names.TAG_REFIT_OF, names.TAG_CV_PARENT)
    runs = [r for r in store.newest_runs(client, ids) if not any(t in r.data.tags for t in nested)]
    table = pd.DataFrame([_row(client, run) for run in runs], columns=list(COLUMNS))
    if all_experiments:
        experiments = {e.experiment_id: e.name for e in client.search_experiments()}
        table.insert(1, "experiment", [experiments[r.info.experiment_id] for r in runs])
    return table


def format_runs(table: pd.DataFrame) -> str:
    """The table as `aqtrack runs` prints it."""
    if table.empty:
        return "no runs"
    shown = table.copy()
    shown["epochs"] = [_epochs(d, t) for d, t in zip(table["epochs"], table["total_epochs"], strict=True)]
    shown["best (epoch)"] = [
        "-" if b != b else f"{by} {b:.4f} ({e})"
        for by, b, e in zip(table["select_by"], table["best_score"], table["best_epoch"], strict=True)
    ]
    for key, header in TEST_HEADERS.items():
        shown[header] = [_num(v, ".4f") for v in table[key]]
    shown["grad_norm"] = [_num(v, ".4f") for v in table["grad_norm"]]
    shown["lr"] = [_num(v, ".2e") for v in table["lr"]]
    cv = table["folds_planned"] > 0
    for key, header in TEST_HEADERS.items():  # a cross-validation's: mean ± sample std over its folds
        shown.loc[cv, header] = [
            _num(v, ".4f") + ("" if s != s else f"±{s:.4f}")
            for v, s in zip(table.loc[cv, key], table.loc[cv, STD_COLUMNS[key]], strict=True)
        ]
    shown.loc[cv, "epochs"] = "-"
    shown["folds"] = [
        f"{d}/{p}" if p else "" for d, p in zip(table["folds_finished"], table["folds_planned"], strict=True)
    ]
    order = [c for c in ("run_id", "experiment", "name", "status", "epochs", "best (epoch)") if c in shown]
    order += ["folds"] if cv.any() else []  # the column only where a cross-validation is listed
    rest = [*TEST_HEADERS.values(), "grad_norm", "lr", "resumable", "origin", "started"]
    return shown[[*order, *rest]].to_string(index=False)


def _experiment_ids(client, name: str | None, all_experiments: bool) -> list[str]:
    if all_experiments:
        return [e.experiment_id for e in client.search_experiments()]
    what = f"--experiment {name!r}" if name else f"experiment {Config().run.experiment!r} (the default)"
    name = name or Config().run.experiment
    found = store.find_experiment_id(client, name)
    if found is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise ConfigError(
            f"{what}: no such experiment in {client.tracking_uri} (experiments: {known}); "
            "check the name, or pass --all"
        )
    return [found]


def _row(client, run) -> dict:
    if names.TAG_CV in run.data.tags:
        return _cv_row(client, run)
    done, best = _progress(client, run)
    metrics = run.data.metrics
    return {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "epochs": done,
        "total_epochs": _total_epochs(run),
        "select_by": best.select_by,
        "best_score": best.score,
        "best_epoch": best.epoch,
        "best_val_acc": best.val_acc,
        # held out, evaluated once when it finished
        **{key: metrics.get(key, float("nan")) for key in TEST_KEYS},
        "grad_norm": metrics.get(GRAD_NORM, float("nan")),
        "lr": metrics.get(LR, float("nan")),
        "resumable": resumable(run, client.tracking_uri),
        "origin": origin(run),
        "started": _time(run.info.start_time),
        "folds_finished": 0,
        "folds_planned": 0,
        **{column: float("nan") for column in STD_COLUMNS.values()},
    }


def _cv_row(client, run) -> dict:
    """A cross-validation's parent: folds finished / planned and the aggregate over the finished ones."""
    metrics, (finished, planned) = run.data.metrics, _folds(run)
    return {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "epochs": 0,
        "total_epochs": 0,
        "select_by": run.data.params.get("select_by", VAL_ACC),
        "best_score": float("nan"),
        "best_epoch": 0,
        "best_val_acc": float("nan"),
        **{key: metrics.get(CV_MEAN[key], float("nan")) for key in TEST_KEYS},
        "grad_norm": float("nan"),
        "lr": float("nan"),
        "resumable": resumable(run, client.tracking_uri),
        "origin": origin(run),
        "started": _time(run.info.start_time),
        "folds_finished": finished,
        "folds_planned": planned,
        **{STD_COLUMNS[key]: metrics.get(CV_STD[key], float("nan")) for key in TEST_KEYS},
    }


def _folds(run) -> tuple[int, int]:
    tags = run.data.tags
    return int(tags.get(names.TAG_CV_FINISHED, "0")), int(tags.get(names.TAG_CV_PLANNED, "0"))


@dataclass(frozen=True)
class Best:
    """The epoch a run selects: the first with the highest `select_by` (on validation)."""

    select_by: str
    score: float = float("nan")
    epoch: int = 0
    val_acc: float = float("nan")

    def __str__(self) -> str:
        also = f", val_acc {self.val_acc:.4f}" if self.select_by != VAL_ACC else ""
        return f"best epoch {self.epoch} by {self.select_by} ({self.score:.4f}{also})"


def _progress(client, run) -> tuple[int, Best]:
    """(epochs logged, the best epoch) from the run's metric history; the run's `select_by` param (val_acc
    before there was one) says what "best" means."""
    select_by = run.data.params.get("select_by", VAL_ACC)
    history = store.fetch_history(client, run.info.run_id, tuple({VAL_ACC, select_by}))
    points, val_acc = history[select_by], history[VAL_ACC]
    if not points:
        return 0, Best(select_by)
    score = max(points.values())
    epoch = min(step for step, v in points.items() if v == score)
    return max(points), Best(select_by, score, epoch, val_acc.get(epoch, float("nan")))


def _total_epochs(run) -> int:
    """rounds x epochs_per_round, with rounds from the tag a resume with more rounds raises."""
    params, tags = run.data.params, run.data.tags
    rounds = tags.get(names.TAG_ROUNDS, params.get("rounds", ""))
    per_round = params.get("epochs_per_round", "")
    return int(rounds) * int(per_round) if rounds.isdigit() and per_round.isdigit() else 0


def resumable(run, tracking_uri: str) -> str:
    """Whether `aqtrack train --resume` (`aqtrack cv --resume` for a cross-validation) can continue the
    run, and why (not)."""
    tags, status = run.data.tags, run.info.status
    if names.TAG_CV in tags:
        finished, planned = _folds(run)
        busy = status != "FINISHED" and store.held_elsewhere(run, tracking_uri)
        if status == "FINISHED":
            return "finished"
        return f"not now: {busy}" if busy else f"yes: cv --resume ({finished} of {planned} folds finished)"
    epoch = tags.get(CHECKPOINT_EPOCH_TAG)
    if not epoch:
        return "no: no checkpoint"
    if names.TAG_CONTINUED_IN in tags:
        return f"no: continued in {tags[names.TAG_CONTINUED_IN][:8]}"
    if status == "FINISHED":
        return "finished; --rounds to extend"
    busy = store.held_elsewhere(run, tracking_uri)
    if busy:
        return f"not now: {busy}"
    return f"yes, from epoch {epoch}"


def origin(run) -> str:
    """Where the run came from: another run it resumes or forks ("" for a run started afresh)."""
    tags = run.data.tags
    if names.TAG_CV in tags:
        folds = tags[names.TAG_CV]
        return f"cross-validation, {'leave one subject out' if folds == 'loso' else folds + ' folds'}"
    if names.TAG_CV_PARENT in tags:
        return f"fold {tags.get(names.TAG_CV_FOLD, '?')} of cv {tags[names.TAG_CV_PARENT][:8]}"
    if names.TAG_FORKED_FROM in tags:
        source, _, epoch = tags[names.TAG_FORKED_FROM].partition("@")
        return f"fork of {source[:8]}@{epoch}"
    if names.TAG_RESUMED_FROM in tags:
        return f"resumes {tags[names.TAG_RESUMED_FROM][:8]}"
    if names.TAG_CONTINUED_IN in tags:
        return f"continued in {tags[names.TAG_CONTINUED_IN][:8]}"
    return ""


def show_run(run_id: str, tail: int = 10) -> str:
    """What `aqtrack show` prints: the run's summary, params, the last `tail` epochs of its metrics,
    its other metrics and its artifacts (with sizes)."""
    client = store.connect(existing=True)
    run = store.get_run(client, run_id, label="show")
    done, best = _progress(client, run)
    info, data = run.info, run.data
    experiment = client.get_experiment(info.experiment_id).name
    ended = f", ran {_duration(info.end_time - info.start_time)}" if info.end_time else ""
    progress = (
        f"epochs {_epochs(done, _total_epochs(run))}"
        + (f", {best}" if done else "")
        + "".join(f", {k} {data.metrics[k]:.4f}" for k in TEST_KEYS if k in data.metrics)
        if names.TAG_CV not in data.tags
        else "cross-validation, {} of {} folds finished".format(*_folds(run))
    )
    lines = [
        f"run {run_id} {info.run_name!r} in experiment {experiment!r}",
        f"status {info.status}, started {_time(info.start_time)}{ended}",
        f"{progress}; resumable: {resumable(run, client.tracking_uri)}",
    ]
    tags = [
        f"{k}={v}" for k, v in sorted(data.tags.items()) if k.startswith("aqtrack.") and k not in HIDDEN_TAGS
    ]
    lines += ["", "tags:", *(f"  {tag}" for tag in tags)] if tags else []  # one per line: values have spaces
    lines += _section("params", " ".join(f"{k}={v}" for k, v in sorted(data.params.items())))
    lines += ["", *_history(client, run_id, tail)]
    others = " ".join(f"{k}={v:.4g}" for k, v in sorted(data.metrics.items()) if k not in METRIC_KEYS)
    lines += _section("other metrics (last value)", others)
    lines += ["", "artifacts:", *_tree(store.artifact_tree(client, run_id))]
    lines += ["", "models (mlflow.pyfunc.load_model('runs:/<run id>/<name>') loads the newest READY one):"]
    models = exports.run_models(client, run_id)
    lines += [
        f"  {name}  {model_id}  {status}  best epoch {epoch}" for name, model_id, status, epoch in models
    ]
    lines += [] if models else ["  none"]
    lines += _lineage(client, run)
    return "\n".join(lines)


def _lineage(client, run) -> list[str]:
    """The runs linked to this one: where it came from, its forks and its SVM refits."""
    tags, lines = run.data.tags, []
    if names.TAG_CV_PARENT in tags:
        lines.append(
            f"  fold {tags.get(names.TAG_CV_FOLD, '?')} of cross-validation {tags[names.TAG_CV_PARENT]}"
        )
    for fold, child in sorted(store.cv_folds(client, run).items()) if names.TAG_CV in tags else []:
        test_acc = child.data.metrics.get(TEST_ACC)
        scores = f"test_acc={test_acc:.4f}" if test_acc is not None else child.info.status
        lines.append(
            f"  fold {fold}: {child.info.run_id} {child.info.run_name!r} {child.info.status}: {scores}"
        )
    source = tags.get(names.TAG_FORKED_FROM) or tags.get(names.TAG_RESUMED_FROM)
    if source:
        lines.append(f"  origin: {'fork of' if names.TAG_FORKED_FROM in tags else 'resumes'} {source}")
    for key, label in ((names.TAG_CONTINUED_IN, "continued in"), (names.TAG_FORKS, "forks")):
        if key in tags:
            lines.append(f"  {label}: {tags[key].replace(',', ', ')}")
    refits = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`{names.TAG_REFIT_OF}` = '{run.info.run_id}'"
    )
    for refit in sorted(refits, key=lambda r: r.info.start_time):
        m = refit.data.metrics
        scores = " ".join(f"{k}={m[k]:.4f}" for k in (SVM_VAL_ACC, SVM_VAL_F1) if k in m)
        name = refit.info.run_name
        lines.append(f"  svm refit {refit.info.run_id} {name!r}: {scores or refit.info.status}")
    return ["", "linked runs:", *lines] if lines else []


def _history(client, run_id: str, tail: int) -> list[str]:
    import pandas as pd

    points = store.fetch_history(client, run_id, METRIC_KEYS)
    table = pd.DataFrame({k: pd.Series(v, dtype="float64") for k, v in points.items()}).sort_index()
    if table.empty:
        return ["no epochs logged"]
    table.index.name = "epoch"
    shown = table.tail(tail).reset_index()
    text = shown.to_string(index=False, formatters={LR: "{:.3e}".format}, float_format="{:.4f}".format)
    return [f"last {len(shown)} of {len(table)} epochs:", text]


def _tree(entries: list[tuple[str, int]]) -> list[str]:
    if not entries:
        return ["  (none)"]
    lines = []
    for path, size in entries:
        depth, name = path.count("/"), path.rpartition("/")[2]
        lines.append("  " * (depth + 1) + (f"{name}/" if size < 0 else f"{name}  {_size(size)}"))
    return lines


def _section(title: str, text: str) -> list[str]:
    if not text:
        return []
    # Never inside a value: a run id cut in two cannot be copied.
    wrapped = textwrap.fill(
        text,
        width=108,
        initial_indent="  ",
        subsequent_indent="  ",
        break_long_words=False,
        break_on_hyphens=False,
    )
    return ["", f"{title}:", wrapped]


def _epochs(done: int, total: int) -> str:
    return f"{done}/{total}" if total else str(done)


def _num(value: float, fmt: str) -> str:
    return "-" if value != value else f"{value:{fmt}}"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _time(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _duration(ms: int) -> str:
    minutes, seconds = divmod(round(ms / 1000), 60)
    return f"{minutes}m {seconds}s" if minutes else f"{seconds} s"
