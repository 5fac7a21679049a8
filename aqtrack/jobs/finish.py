"""The finishing stage of a run, and the public `fit_svm` / `plot_curves`.

Once the last epoch is published, the run gets what is made from its best checkpoint (the verified
file, loaded with weights_only; never a model unpickled from the tracking server; the best epoch was
chosen on the validation split): the network as an MLflow model (`model`, registered with `--register
NAME`), the held-out test split evaluated once (`test_acc`, `test_balanced_acc`, `test_f1_macro` at
step = the final epoch, a per-class table), confusion matrices on the validation and test splits, the
training curves, then the SVM stage (`svm_val_acc`, `svm_val_f1`, `svm_test_acc`, `svm_test_f1`, and
the fitted pipeline as the `svm` model). Each step first looks at what the run already has, so a run
killed while finishing and resumed ends with one of each. A fold of a cross-validation also keeps its
test split's predictions (`test/predictions.csv`), which its parent pools.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aqtrack import names
from aqtrack.config import Config, SvmConfig
from aqtrack.data.dataset import ActionQualityData, load_configured
from aqtrack.errors import DataError, ResumeError
from aqtrack.names import (
    CHECKPOINT_EPOCH_TAG,
    METRIC_KEYS,
    REPORT_SERIES,
    SVM_TEST_ACC,
    SVM_TEST_F1,
    SVM_VAL_ACC,
    SVM_VAL_F1,
    TAG_SVM,
    TEST_ACC,
    TEST_BALANCED_ACC,
    TEST_F1_MACRO,
    TEST_KEYS,
)
from aqtrack.tracking import exports, store
from aqtrack.tracking.resume import find_best
from aqtrack.training.checkpoint import History, TrainState
from aqtrack.training.model import ActionQualityNet, ModelSpec, build_model, embed
from aqtrack.training.scores import confusion_counts, scores

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from aqtrack.outputs.plots import Curves
    from aqtrack.outputs.svm import SvmResult

log = logging.getLogger(__name__)

CURVES_REFRESH_S = 60.0  # the least time between two redraws of the curves during training
EXAMPLE_ROWS = 2  # > 1, or torch.export fixes the batch size of the exported network at 1


@dataclass
class Finishing:
    """What the finishing stage works from: the run, its settings and data, and where its files are."""

    client: Any
    run_id: str
    config: Config
    data: ActionQualityData
    state: TrainState  # after the last epoch
    local_dir: Path  # the run's local checkpoint copies


@dataclass(frozen=True)
class Outputs:
    """The best network's outputs on each split: features [N, 2*hidden] and logits [N, K]."""

    features: dict[str, np.ndarray]
    logits: dict[str, np.ndarray]

    @classmethod
    def of(cls, network: ActionQualityNet, data: ActionQualityData) -> Outputs:
        features, logits = {}, {}
        for name, split in data.splits.items():
            features[name], logits[name] = embed(network, split.x, split.lengths)
        return cls(features, logits)


def finish_run(job: Finishing) -> dict[str, float]:
    """Everything made from the best checkpoint, each piece logged unless the run already has it.
    Returns the test scores (empty without a test split)."""
    with tempfile.TemporaryDirectory(prefix="aqtrack-finish-") as tmp:
        best = find_best(job.client, job.run_id, job.local_dir, Path(tmp), label="finishing run")
    network = network_of(best.state)
    outputs = Outputs.of(network, job.data)
    tags = {names.TAG_BEST_EPOCH: str(best.state.epoch)}
    _log_network(job, network, tags)
    test = _log_test(job, outputs, best.state.epoch)
    _log_figures(job, job.state.history, outputs)
    if job.config.svm.svm:
        stage = _SvmStage(job.client, job.run_id, job.state.epoch, job.data, outputs.features, tags)
        stage.fit_and_log(job.config.svm, again=False)
    return test


def network_of(state: TrainState) -> ActionQualityNet:
    network = build_model(ModelSpec(**state.model_spec))
    network.load_state_dict(state.model)
    return network.eval()


def _example(x: np.ndarray) -> np.ndarray:
    return x[np.arange(EXAMPLE_ROWS) % len(x)]


def _log_network(job: Finishing, network: ActionQualityNet, tags: dict[str, str]) -> None:
    done = [m for m in exports.ready_models(job.client, job.run_id, names.NETWORK_MODEL) if _same(m, tags)]
    model_id = done[0].model_id if done else None
    if model_id is None:
        d = job.data
        about = exports.NetworkInfo(d.class_names, d.channel_names, job.config.data.missing)
        model_id = exports.log_network(job.client, job.run_id, network, _example(d.x_val), tags, about)
    if job.config.run.register:
        exports.register(job.client, job.run_id, model_id, job.config.run.register)


def _same(model: exports.ModelRecord, tags: dict[str, str]) -> bool:
    return all(model.tags.get(k) == v for k, v in tags.items())


def _log_test(job: Finishing, outputs: Outputs, best_epoch: int) -> dict[str, float]:
    """The held-out test split, evaluated once, with the best checkpoint (chosen on validation): the
    scores at step = the final epoch, and a per-class precision/recall table. Validation selects; this
    is the number to report."""
    test = job.data.test
    if test is None:
        return {}
    predicted = outputs.logits["test"].argmax(axis=1)
    counts = confusion_counts(test.y, predicted, job.data.num_classes)
    s = scores(counts)
    values = {TEST_ACC: s["acc"], TEST_BALANCED_ACC: s["balanced_acc"], TEST_F1_MACRO: s["f1_macro"]}
    step = job.state.epoch
    have = {k for k in TEST_KEYS if step in store.metric_steps(job.client, job.run_id, k)}
    store.log_points(job.client, job.run_id, {k: v for k, v in values.items() if k not in have}, step, {})
    logged = store.artifact_names(job.client, job.run_id, names.TEST_DIR)
    if names.PER_CLASS_ARTIFACT.rpartition("/")[2] not in logged:
        table = per_class_table(test.y, predicted, job.data.class_names)
        exports.log_table(job.client, job.run_id, table, names.PER_CLASS_ARTIFACT)
    if job.config.data.folds and names.TEST_PREDICTIONS_ARTIFACT.rpartition("/")[2] not in logged:
        _log_test_predictions(job, outputs.logits["test"])
    log.info(
        "run %s: test split (%d sequences, best checkpoint of epoch %d, evaluated once): test_acc %.4f, "
        "test_balanced_acc %.4f, test_f1_macro %.4f",
        job.run_id, len(test), best_epoch, *values.values(),
    )  # fmt: skip
    return values


def _log_test_predictions(job: Finishing, logits: np.ndarray) -> None:
    """A fold's test split as its best network scored it: sample_id, subject ("" without subjects),
    label, predicted and p_<class> per class, one row per sample in the split's order."""
    import pandas as pd

    from aqtrack.jobs.predictions import PROBABILITY_PREFIX, softmax

    test, class_names = job.data.test, np.asarray(job.data.class_names)
    probabilities = softmax(logits)
    table = pd.DataFrame(
        {
            "sample_id": test.sample_ids,
            "subject": test.subjects if test.subjects is not None else "",
            "label": class_names[test.y],
            "predicted": class_names[logits.argmax(axis=1)],
        }
    )
    for k, name in enumerate(class_names):
        table[PROBABILITY_PREFIX + name] = probabilities[:, k]
    with tempfile.TemporaryDirectory(prefix="aqtrack-finish-") as tmp:
        path = Path(tmp) / names.TEST_PREDICTIONS_ARTIFACT.rpartition("/")[2]
        table.to_csv(path, index=False)
        job.client.log_artifact(job.run_id, str(path), names.TEST_DIR)


def per_class_table(y_true: np.ndarray, y_pred: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """{"class", "precision", "recall", "f1", "support"} columns, one row per class (sklearn's
    classification report; a class never predicted has precision 0)."""
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(range(len(class_names)))
    p, r, f, n = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "class": list(class_names),
        "precision": [float(v) for v in p],
        "recall": [float(v) for v in r],
        "f1": [float(v) for v in f],
        "support": [int(v) for v in n],
    }


def _log_figures(job: Finishing, history: History, outputs: Outputs) -> None:
    """The curves and confusion matrices, logged to the run and kept in its local folder."""
    from aqtrack.outputs.plots import confusion_matrix_figure, save_png, training_curves

    figures = [(training_curves(history_curves(history), title=f"run {job.run_id}"), names.CURVES_ARTIFACT)]
    for split, artifact in (("val", names.CONFUSION_ARTIFACT), ("test", names.TEST_CONFUSION_ARTIFACT)):
        if split not in outputs.logits:
            continue
        y = job.data.splits[split].y
        counts = confusion_counts(y, outputs.logits[split].argmax(axis=1), job.data.num_classes)
        title = f"best network on the {_SPLIT_NAMES[split]} split (run {job.run_id[:8]})"
        figures.append((confusion_matrix_figure(counts, job.data.class_names, title=title), artifact))
    for figure, artifact in figures:
        # Drawn once, kept in <output-dir>/<run id>/plots/ and logged as the same file.
        exports.log_png(job.client, job.run_id, save_png(figure, job.local_dir.parent / artifact), artifact)


_SPLIT_NAMES = {"val": "validation", "test": "test"}


def history_curves(history: History) -> Curves:
    from aqtrack.outputs.plots import Curves

    return Curves.from_lists(history.metrics, range(1, history.epochs + 1))


@dataclass
class _SvmStage:
    """The SVM stage of one run: the best network's features of each split, and where results go."""

    client: Any
    run_id: str
    step: int  # the run's final epoch: the step of the svm_* metrics
    data: ActionQualityData
    features: dict[str, np.ndarray]  # "train" / "val" / "test" -> [N, 2*hidden]
    tags: dict[str, str]  # of the best checkpoint the features come from

    def fit_and_log(self, svm: SvmConfig, again: bool) -> SvmResult:
        """Fit on train, score on validation (and test); log the metrics and the fitted pipeline, each
        unless the run has it already (`again`: an explicit refit, which always logs)."""
        from aqtrack.outputs.svm import fit_svm

        f, d = self.features, self.data
        test = (f["test"], d.test.y) if d.test is not None else None
        result = fit_svm(
            f["train"], d.y_train, f["val"], d.y_val, c=svm.svm_c, kernel=svm.svm_kernel, test=test
        )
        result.run_id = run_id = self.run_id
        settings = f"kernel={svm.svm_kernel} C={svm.svm_c:g}"
        tags = {**self.tags, TAG_SVM: settings}
        models = [] if again else exports.ready_models(self.client, run_id, names.SVM_MODEL)
        if not any(_same(m, tags) for m in models):
            exports.log_svm(self.client, run_id, result.pipeline, _example(f["val"]), tags)
        metrics = {SVM_VAL_ACC: result.val_acc, SVM_VAL_F1: result.val_f1}
        if result.test_acc is not None:
            metrics |= {SVM_TEST_ACC: result.test_acc, SVM_TEST_F1: result.test_f1}
        if not again:  # a resumed finish: the points it logged before it was killed stay the only ones
            have = {k: store.metric_steps(self.client, run_id, k) for k in metrics}
            metrics = {k: v for k, v in metrics.items() if self.step not in have[k]}
        store.log_points(self.client, run_id, metrics, self.step, tags={TAG_SVM: settings})
        log.log(
            logging.DEBUG if again else logging.INFO,  # a refit's caller reports it
            "run %s: SVM (%s) on the best network's features: svm_val_acc %.4f, svm_val_f1 %.4f%s",
            run_id, settings, result.val_acc, result.val_f1,
            "" if result.test_acc is None else f", svm_test_acc {result.test_acc:.4f}",
        )  # fmt: skip
        return result


def fit_svm(run_id: str, *, c: float | None = None, kernel: str | None = None) -> SvmResult:
    """Refit the SVM stage of a finished run, from its verified best checkpoint's features of the run's
    data, as a run of its own nested under it (`mlflow.parentRunId`, tag `aqtrack.refit_of`): the
    refit's params (svm_c, svm_kernel), its `svm_val_acc` / `svm_val_f1` (at step = the training run's
    final epoch) and its `svm` model. The training run itself is left as it is, so each of its metrics
    keeps one point per step and every refit's score says which C and kernel made it.
    `c` and `kernel` default to the run's own settings. Returns the refit's result (`run_id`: the refit).
    """
    client = store.connect()
    run = store.get_run(client, run_id, label="svm")
    if run.info.status == "RUNNING":
        raise ResumeError(
            f"svm {run_id}: the run is RUNNING; its own SVM stage runs when it finishes "
            f"(if its process is gone, `aqtrack train --resume {run_id}` finishes it)"
        )
    with tempfile.TemporaryDirectory(prefix="aqtrack-svm-") as tmp:
        best = find_best(client, run_id, None, Path(tmp), label="svm")
    config = Config.from_dict(best.state.config)
    svm = SvmConfig(
        svm=True,
        svm_c=config.svm.svm_c if c is None else c,
        svm_kernel=config.svm.svm_kernel if kernel is None else kernel,
    )
    data = load_configured(config.data)
    features = Outputs.of(network_of(best.state), data).features
    step = int(run.data.tags.get(CHECKPOINT_EPOCH_TAG, best.state.epoch))
    tags = {names.TAG_BEST_EPOCH: str(best.state.epoch)}
    refit = store.create_child_run(
        client,
        run,
        name=f"svm-{svm.svm_kernel}-C{svm.svm_c:g}",
        tags={names.TAG_REFIT_OF: run_id, **tags},
    )
    with store.terminating(client, refit):
        params = {"svm_c": svm.svm_c, "svm_kernel": svm.svm_kernel, "best_epoch": best.state.epoch}
        store.log_params(client, refit, params)
        result = _SvmStage(client, refit, step, data, features, tags).fit_and_log(svm, again=True)
    result.refit_of = run_id
    return result


def plot_curves(source: str | Path) -> Figure:
    """The training-curves figure of a run id, or of an `experiment_report.json` file."""
    from aqtrack.outputs.plots import Curves, training_curves

    text = str(source)
    if store.RUN_ID_RE.match(text) and not Path(text).exists():
        client = store.connect()
        store.get_run(client, text, label="plot")
        points = store.fetch_history(client, text, METRIC_KEYS)
        return training_curves(Curves.from_points(points), title=f"run {text}")
    return training_curves(report_curves(Path(text)), title=str(text))


def report_curves(path: Path) -> Curves:
    from aqtrack.outputs.plots import Curves

    try:
        report = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such file; pass a run id or an experiment_report.json") from e
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable JSON report ({type(e).__name__}: {e})") from e
    if not isinstance(report, dict) or "control_losses" not in report:
        raise DataError(f"{path}: not an experiment_report.json (no 'control_losses'); pass a run's report")
    series = {key: report[name] for name, key in REPORT_SERIES.items() if isinstance(report.get(name), list)}
    epochs = report.get("epochs") or list(range(1, len(report["control_losses"]) + 1))
    return Curves.from_lists(series, epochs)


def curves_refresher(tracker, output_dir: Path, interval: int):
    """An epoch-end hook: at periodic-checkpoint epochs, redraw the training curves into
    `<output_dir>/plots/` and queue them for the run (sent in the epoch's one flush). Drawing takes
    ~0.2 s, so it happens at most once every CURVES_REFRESH_S seconds."""
    drawn = [-math.inf]

    def refresh(state: TrainState) -> None:
        if state.epoch % interval or time.monotonic() - drawn[0] < CURVES_REFRESH_S:
            return
        drawn[0] = time.monotonic()
        from aqtrack.outputs.plots import save_png, training_curves

        figure = training_curves(history_curves(state.history), title=f"run {state.run_id}")
        tracker.log_artifact(save_png(figure, output_dir / names.CURVES_ARTIFACT), names.PLOTS_DIR)

    return refresh
