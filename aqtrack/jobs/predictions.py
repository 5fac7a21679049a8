"""`aqtrack predict`: score new recordings with a trained run's best network or a registered model.

    aqtrack predict SOURCE FILE [-o predictions.csv]
    aqtrack.predict(source, path, output=None) -> pandas.DataFrame

SOURCE is a training run id (32 hex characters): the network is rebuilt from the run's verified best
checkpoint (loaded with weights_only), its class names come from the checkpoint (else the run's
dataset_stats.json), its channel names from dataset_stats.json, its missing-value policy from the
checkpoint's config. Or a model URI, `models:/NAME/VERSION`, `models:/NAME@ALIAS` or `runs:/RUN_ID/model`:
a network aqtrack logged, whose weights are read from its pt2 archive without loading the program (why:
`exports.read_pt2_weights`), with the class names, channel names and policy of its MLflow metadata.

FILE is read by `aqtrack.data.files.read_recordings`: any format and length training reads, labels
optional (for the whole file or per recording: a table's label empty on all of a recording's rows, an
.npz's y NaN or ''), channels matched to the run's, missing values filled or refused by the run's policy.

Shapes: x float32 [N, T_max, C] (NaN after each recording's real length) -> batches of BATCH_SIZE
recordings of similar length, each cut to its longest, through the masked network with the real lengths
-> logits [N, K] -> softmax [N, K], in the run's class order. A recording gets the probabilities it gets
alone, whatever shares its batch.

Output: one row per recording, in the file's order (tables: by sample_id): sample_id, subject and the
file's other per-sample columns, label (the class name, empty for an unlabelled recording; only when the
file has labels), predicted (the most probable class), and p_<class name> for each class. With `output`,
written there as CSV atomically (a temporary file, then a rename). Every recording is scored.

Scores: accuracy and balanced accuracy over the labelled recordings only ("N labelled recordings of M"
when some are not). A recording of a subject the run trained or selected on (its dataset_stats.json's
train and val subjects; for a model, its run's, when this store has that run) flatters the run: when
the file has subjects and some labelled recordings are of those, one warning line says how many and
names a few, and the recordings of the subjects the run never saw are scored apart. Without subjects
in the file or the run's, nothing is said: it cannot be told. A recording without a subject counts on
neither side.

Errors, each one line (the CLI's `aqtrack: error:`, exit 2): a source that is neither a run id nor a
model URI, an unknown run or model, a run without a verified best checkpoint, a model aqtrack did not
log, a missing, unreadable or unsupported file, channels or labels that are not the run's, a label empty
on some rows of a recording and set on others, missing values a run refuses, an output path that cannot
be written. Nothing is ever written to the tracking store.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aqtrack import names
from aqtrack.atomic import write_atomically
from aqtrack.config import Config
from aqtrack.data.files import Recordings, check_file, read_recordings
from aqtrack.errors import ConfigError, DataError, ModelError, ResumeError
from aqtrack.tracking import exports, store
from aqtrack.tracking.resume import find_best
from aqtrack.training.model import ActionQualityNet, ModelSpec, build_model, embed

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

BATCH_SIZE = 256  # recordings per forward pass
PROBABILITY_PREFIX = "p_"  # p_<class name>: one probability column per class
OUTPUT_COLUMNS = ("sample_id", "subject", "label", "predicted")
MODEL_URI = re.compile(r"^(models:/\S+|runs:/[0-9a-f]{32}/\S+)$")
SOURCE_HINT = (
    "a training run id (32 hex characters), models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/model"
)


@dataclass(frozen=True)
class Scorer:
    """A trained network and what it was trained on."""

    network: ActionQualityNet  # eval mode
    about: exports.NetworkInfo  # class names (the order of the logits), channel names, missing policy
    source: str  # the SOURCE as given
    run_id: str
    best_epoch: int | None  # None: a logged model that does not say
    # The subjects of the run's train and val splits (what it trained and selected on); None: unknown
    # (data without subjects, or a model whose run this store does not have).
    trained_subjects: frozenset[str] | None = None

    def describe(self) -> str:
        """'run X (best epoch E)' or 'models:/NAME/1 (run X, best epoch E)'."""
        epoch = f"best epoch {self.best_epoch if self.best_epoch is not None else '?'}"
        if self.source == self.run_id:
            return f"run {self.run_id} ({epoch})"
        return f"{self.source} (run {self.run_id}, {epoch})"


@dataclass(frozen=True)
class Scores:
    """Accuracy and balanced accuracy over `recordings` labelled recordings."""

    accuracy: float
    balanced_accuracy: float
    recordings: int

    def __str__(self) -> str:
        return f"{self.accuracy:.4f}, balanced accuracy {self.balanced_accuracy:.4f}"


@dataclass(frozen=True)
class Predictions:
    """The scored table, the network that scored it and, when some recordings are labelled, its scores."""

    table: pd.DataFrame
    scorer: Scorer
    scores: Scores | None = None  # over the labelled recordings; None: none is labelled
    # Of the labelled recordings with a subject: how many are of subjects the run trained or selected
    # on, and the scores of the others. None: it cannot be told (no subjects in the file or the run).
    seen: int | None = None
    held_out: Scores | None = None  # None also when there are none
    warning: str | None = None  # the line logged when `seen`: how many, naming a few subjects

    def lines(self, output: Path | None) -> list[str]:
        """What `aqtrack predict` prints: the summary, then (with labels) the scores, then (when some
        labelled recordings are of subjects the run trained or selected on) those of the others."""
        where = f" -> {output}" if output is not None else ""
        lines = [f"{len(self.table)} recordings scored with {self.scorer.describe()}{where}"]
        if self.scores is None:
            return lines
        n = self.scores.recordings
        count = f"{n} labelled recordings" + ("" if n == len(self.table) else f" of {len(self.table)}")
        held = self.held_out.recordings if self.held_out is not None else 0
        if self.seen:
            some = "all" if self.seen == n else self.seen
            count += f"; {some} of subjects the run trained or selected on"
        elif held == n:
            count += ", all of subjects the run never saw"
        lines.append(f"accuracy {self.scores} ({count})")
        if 0 < held < n:
            lines.append(f"accuracy on the {held} recordings of subjects the run never saw: {self.held_out}")
        return lines


def predict(source: str, path: str | Path, output: str | Path | None = None) -> pd.DataFrame:
    """Score the recordings in `path` with `source` (a run id or a model URI); see the module docstring.
    With `output`, the table is also written there as CSV. What the CLI prints is logged."""
    result = score(source, path, None if output is None else Path(output))
    for line in result.lines(None if output is None else Path(output)):
        log.info("%s", line)
    return result.table


def score(source: str, path: str | Path, output: Path | None = None) -> Predictions:
    """`predict`, returning the scorer and the scores with the table (what the CLI prints). Logs the
    warning about recordings of subjects the run trained or selected on, if any."""
    # Everything the user typed is checked before the tracking store is contacted.
    kind = _source_kind(source)
    path = check_file(path)
    if output is not None:
        check_output(output)
    client = store.connect(existing=True)
    with tempfile.TemporaryDirectory(prefix="aqtrack-predict-") as tmp:
        if kind == "run":
            scorer = run_scorer(client, source, Path(tmp))
        else:
            scorer = model_scorer(client, source, Path(tmp))
    about = scorer.about
    recordings = read_recordings(
        path, channel_names=about.channel_names, class_names=about.class_names, missing=about.missing
    )
    probabilities = softmax(logits_of(scorer.network, recordings))  # [N, K]
    table = prediction_table(path, recordings, about.class_names, probabilities)
    result = assess(table, scorer, recordings, probabilities.argmax(axis=1))
    if result.warning:
        log.warning("%s", result.warning)
    if output is not None:
        write_csv(table, output)
    return result


def _source_kind(source: str) -> str:
    if store.RUN_ID_RE.match(source):
        return "run"
    if MODEL_URI.match(source):
        return "model"
    shown = source if len(source) <= 60 else source[:57] + "..."
    raise ConfigError(f"predict {shown!r}: not a run id or a model URI; pass {SOURCE_HINT}")


def run_scorer(client, run_id: str, tmp: Path) -> Scorer:
    """The network of the run's verified best checkpoint (weights_only), its classes, channels and
    missing-value policy. Read only: downloads into `tmp`."""
    store.get_run(client, run_id, label="predict")
    try:
        best = find_best(client, run_id, None, tmp, label="predict")
    except ResumeError as e:
        why = str(e) if len(str(e)) <= 160 else str(e)[:157] + "..."
        raise ResumeError(f"{why}; score another run (`aqtrack runs` lists them)") from e
    stats = _dataset_stats(client, run_id, tmp)
    class_names = tuple(best.state.class_names or stats.get("class_names") or ())
    channel_names = tuple(stats.get("channel_names") or ())
    network = build_model(ModelSpec(**best.state.model_spec))
    network.load_state_dict(best.state.model)
    spec = network.spec
    if (len(class_names), len(channel_names)) != (spec.num_classes, spec.in_channels):
        raise ModelError(
            f"predict {run_id}: the run does not record the names of its {spec.num_classes} classes and "
            f"{spec.in_channels} channels (checkpoint, {names.DATASET_STATS_ARTIFACT}); score its "
            "registered model (models:/NAME/VERSION) instead"
        )
    missing = Config.from_dict(best.state.config).data.missing
    about = exports.NetworkInfo(class_names, channel_names, missing)
    return Scorer(network.eval(), about, run_id, run_id, best.state.epoch, trained_subjects(stats))


def model_scorer(client, uri: str, tmp: Path) -> Scorer:
    """The network of a model aqtrack logged (`exports.load_logged_network`), with the subjects its run
    trained on when this store has that run (a model can outlive its run, or come from another store:
    then they are unknown, and nothing is said about them)."""
    logged = exports.load_logged_network(client, uri, tmp)
    try:
        store.get_run(client, logged.run_id, label="predict")
    except ResumeError:
        stats = {}
    else:
        stats = _dataset_stats(client, logged.run_id, tmp / "run")
    subjects = trained_subjects(stats)
    return Scorer(logged.network, logged.about, uri, logged.run_id, logged.best_epoch, subjects)


def _dataset_stats(client, run_id: str, tmp: Path) -> dict:
    """The run's dataset_stats.json, or {} when it has none."""
    path = store.download_if_present(client, run_id, names.DATASET_STATS_ARTIFACT, tmp)
    return json.loads(path.read_text()) if path is not None else {}


def trained_subjects(stats: dict) -> frozenset[str] | None:
    """The subjects of the train and val splits in a run's dataset_stats: those it trained on and
    selected its best epoch on. None when its data had no subjects (or the stats do not say)."""
    splits = [stats.get(name) for name in ("train", "val")]
    if not all(isinstance(s, dict) and isinstance(s.get("subjects"), list) for s in splits):
        return None
    return frozenset(str(subject) for split in splits for subject in split["subjects"])


def logits_of(network: ActionQualityNet, recordings: Recordings) -> np.ndarray:
    """Logits [N, K] of each recording, through the masked network with its real length. Batches hold
    recordings of similar length (sorted by it), so little padding is computed; the mask makes each
    recording's logits independent of its batch anyway."""
    order = np.argsort(recordings.lengths, kind="stable")
    logits = np.empty((len(recordings), network.spec.num_classes), dtype=np.float32)
    for start in range(0, len(order), BATCH_SIZE):
        idx = order[start : start + BATCH_SIZE]
        lengths = recordings.lengths[idx]
        x = recordings.x[idx, : int(lengths.max())]  # [B, T_b, C], NaN past each length
        _, logits[idx] = embed(network, x, lengths, batch_size=BATCH_SIZE)
    return logits


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits [N, K], in float64."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def prediction_table(
    path: Path, recordings: Recordings, class_names: tuple[str, ...], probabilities: np.ndarray
) -> pd.DataFrame:
    """One row per recording: sample_id, subject and metadata, label (if any), predicted, p_<class>."""
    import pandas as pd

    names = np.asarray(class_names)
    ours = {*OUTPUT_COLUMNS, *(PROBABILITY_PREFIX + name for name in class_names)}
    clashes = [c for c in recordings.metadata if c in ours]
    if clashes:
        raise DataError(f"{path}: per-sample column {clashes[0][:24]!r} is an output column; rename it")
    columns: dict[str, np.ndarray] = {"sample_id": recordings.sample_ids}
    if recordings.subjects is not None:
        columns["subject"] = recordings.subjects
    columns |= recordings.metadata
    # A value empty for a recording is missing (None) in the table, as an unlabelled label is; the CSV
    # holds an empty field either way.
    columns = {k: _empty_as_none(v) for k, v in columns.items()}
    if recordings.y is not None:  # empty (None) for a recording without a label
        columns["label"] = np.where(recordings.labelled, names[recordings.y], None)
    columns["predicted"] = names[probabilities.argmax(axis=1)]
    columns |= {PROBABILITY_PREFIX + name: probabilities[:, k] for k, name in enumerate(class_names)}
    return pd.DataFrame(columns)


def _empty_as_none(values: np.ndarray) -> np.ndarray:
    """Per-sample strings [N] with None where empty (''); other arrays as they are."""
    if values.dtype.kind != "U" or not (values == "").any():
        return values
    return np.where(values == "", None, values)


def assess(table: pd.DataFrame, scorer: Scorer, recordings: Recordings, predicted: np.ndarray) -> Predictions:
    """The scores of the labelled recordings, and (when the file and the run both have subjects) the
    count of those of subjects the run trained or selected on, with the scores of the others."""
    labelled = recordings.labelled
    if not labelled.any():
        return Predictions(table, scorer)
    scores = _scores(recordings.y[labelled], predicted[labelled])
    trained, subjects = scorer.trained_subjects, recordings.subjects
    if trained is None or subjects is None:
        return Predictions(table, scorer, scores)
    known = labelled & (subjects != "")
    ran_on = known & np.isin(subjects, sorted(trained))
    new = known & ~ran_on
    held_out = _scores(recordings.y[new], predicted[new]) if new.any() else None
    warning = None
    if ran_on.any():
        seen, n = int(ran_on.sum()), scores.recordings
        some = f"all {n}" if seen == n else f"{seen} of the {n}"
        warning = (
            f"{some} labelled recordings are of subjects the run trained or selected on "
            f"({_few(np.unique(subjects[ran_on]))}): accuracy on them says little about new subjects"
        )
    return Predictions(table, scorer, scores, int(ran_on.sum()), held_out, warning)


def _few(names: np.ndarray, limit: int = 5, width: int = 24) -> str:
    """A few names from the file, quoted and cut short: 'a', 'b', 'c', ..."""
    shown = [repr(n if len(n) <= width else n[: width - 3] + "...") for n in names[:limit].tolist()]
    return ", ".join(shown) + (", ..." if len(names) > limit else "")


def _scores(y: np.ndarray, predicted: np.ndarray) -> Scores:
    """scikit-learn's accuracy and balanced accuracy (the mean recall of the classes the labels hold)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    with warnings.catch_warnings():
        # A class predicted that no label holds: sklearn warns, then leaves it out of the mean, as meant.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return Scores(
            float(accuracy_score(y, predicted)), float(balanced_accuracy_score(y, predicted)), len(y)
        )


def check_output(output: Path) -> None:
    """Refuse an output file that cannot be written, before any work: one ConfigError line."""
    folder = output.parent
    if output.is_dir():
        problem = "is a folder; give a file name such as predictions.csv"
    elif not folder.is_dir():
        problem = f"folder {folder} does not exist; create it or choose another file"
    elif not os.access(folder, os.W_OK | os.X_OK):
        problem = f"folder {folder} is not writable; choose another file"
    else:
        return
    raise ConfigError(f"-o {output}: {problem}")


def write_csv(table: pd.DataFrame, output: Path) -> None:
    """Write the table as CSV to a temporary file next to `output`, then rename it: a reader (or a crash)
    sees the old file or the whole new one, never half of it."""
    try:
        write_atomically(output, lambda f: table.to_csv(f, index=False))
    except OSError as e:
        raise ConfigError(f"-o {output}: not writable ({e.strerror or e}); choose another file") from e
