"""The finishing stage of a run.

Once the last epoch is published, the run gets what is made from its best checkpoint (the verified
file, loaded with weights_only; never a model unpickled from the tracking server; the best epoch was
chosen on the validation split): the network as an MLflow model (`model`, registered with `--register
NAME`; skipped with `--no-log-model`), the held-out test split evaluated once (`test_acc`,
`test_balanced_acc`, `test_f1_macro` at step = the final epoch, a per-class table), confusion matrices
on the validation and test splits, the training curves, then the SVM stage (`svm_val_acc`,
`svm_val_f1`, `svm_test_acc`, `svm_test_f1`, and the fitted pipeline as the `svm` model). Each step
first looks at what the run already has, so a run killed while finishing and resumed ends with one of
each. A fold of a cross-validation also keeps its test split's predictions (`test/predictions.csv`),
which its parent pools.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aqtrack import names
from aqtrack.config import Config, SvmConfig
from aqtrack.data.dataset import ActionQualityData
from aqtrack.names import (
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
    from aqtrack.outputs.svm import SvmResult

log = logging.getLogger(__name__)

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
    if job.config.run.log_model:
        _log_network(job, network, tags)
    test = _log_test(job, outputs, best.state.epoch)
    _log_figures(job, job.state.history, outputs)
    if job.config.svm.svm:
        stage = SvmStage(job.client, job.run_id, job.state.epoch, job.data, outputs.features, tags)
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
    from aqtrack.jobs.curves import history_curves
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


@dataclass
class SvmStage:
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
