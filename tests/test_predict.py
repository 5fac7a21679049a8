"""aqtrack predict: a run's best network (or its registered pt2 model) scores new recordings of any format
and length, labels optional, with one-line refusals, and nothing is written to the tracking store."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from stores import own_store

import aqtrack
from aqtrack import names
from aqtrack.cli import main
from aqtrack.data.dataset import load_data, pad_sequences
from aqtrack.errors import ConfigError
from aqtrack.jobs import predictions
from aqtrack.names import BEST
from aqtrack.tracking import exports
from aqtrack.tracking import store as tracking_store
from aqtrack.training.model import ModelSpec, build_model

MODEL = "squat-net"
TINY = {
    "n_train": 64,
    "n_val": 32,
    "n_test": 32,
    "hidden": 8,
    "rounds": 1,
    "epochs_per_round": 2,
    "batch_size": 16,
    "svm": False,
}
HEAVY = ("torch", "mlflow", "pandas", "sklearn", "matplotlib")


@dataclass(frozen=True)
class Trained:
    uri: str  # the store
    run_id: str  # missing="interpolate"; registered as MODEL version 1, alias "champion"
    refusing: str  # a run trained with missing="refuse"
    best_epoch: int
    root: Path  # the store's folder (mlflow.db, mlruns/)


@pytest.fixture(scope="module")
def trained(empty_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Two tiny runs, trained once for the module: predict only reads the store (a test checks that)."""
    root = tmp_path_factory.mktemp("trained")
    with own_store(root, empty_store) as uri:
        result = aqtrack.train(**TINY, output_dir=str(root / "outputs"), register=MODEL)
        refusing = aqtrack.train(**TINY, missing="refuse", seed=1, output_dir=str(root / "outputs"))
        MlflowClient().set_registered_model_alias(MODEL, "champion", "1")
    return Trained(uri, result.run_id, refusing.run_id, result.best_epoch, root)


@pytest.fixture
def store(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> Trained:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    return trained


def synthetic(n: int, seed: int = 0):
    """n synthetic recordings [n, 100, 8], their class indices [n], class and channel names."""
    data = load_data("synthetic", n_train=4, n_val=n, val_fraction=0.2, seed=seed)
    return data.x_val, data.y_val, data.class_names, data.channel_names


def long_table(seqs: list[np.ndarray], channels, labels=None, **per_sample) -> pd.DataFrame:
    """One row per frame: sample_id r00, r01... (file order), frame, label (if given), per-sample
    columns, then ch_<name> per channel."""
    rows = []
    for i, seq in enumerate(seqs):
        own = {k: v[i] for k, v in per_sample.items()}
        label = {} if labels is None else {"label": labels[i]}
        for f, row in enumerate(seq):
            channels_of_row = {f"ch_{c}": float(v) for c, v in zip(channels, row, strict=True)}
            rows.append({"sample_id": f"r{i:02d}", "frame": f, **label, **own, **channels_of_row})
    return pd.DataFrame(rows)


def written(table: pd.DataFrame, path: Path) -> Path:
    table.to_csv(path, index=False)
    return path


def best_network(run_id: str, tmp_path: Path) -> torch.nn.Module:
    path = MlflowClient().download_artifacts(run_id, f"checkpoints/{BEST}", str(tmp_path / "best"))
    best = torch.load(path, weights_only=True)
    network = build_model(ModelSpec(**best["model_spec"]))
    network.load_state_dict(best["model"])
    return network.eval()


def alone(network: torch.nn.Module, seq: np.ndarray) -> np.ndarray:
    """The network's own softmax on one recording [T, C], alone in its batch: no padding, no mask."""
    with torch.no_grad():
        logits = network(torch.from_numpy(np.asarray(seq, dtype=np.float32)[None]))
    return torch.softmax(logits.double(), dim=1).numpy()[0]


def probabilities(table: pd.DataFrame, classes) -> np.ndarray:
    return table[[f"p_{c}" for c in classes]].to_numpy()


def error_line(capsys: pytest.CaptureFixture) -> str:
    """The refusal: exactly one `aqtrack: error:` line, no traceback, under 300 characters."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("aqtrack: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert len(errors[0]) < 300, errors[0]
    return errors[0]


# --- scores -------------------------------------------------------------------------------------------


def test_a_runs_predictions_are_its_best_networks_softmax_whatever_else_is_in_the_file(
    store, tmp_path, monkeypatch
):
    monkeypatch.setattr(predictions, "BATCH_SIZE", 4)  # several batches, each mixing lengths
    x, _, classes, channels = synthetic(8)
    seqs = [x[i, :n] for i, n in enumerate([100, 23, 100, 57, 2, 100, 71, 40])]
    seqs += [np.tile(x[i], (8, 1)) for i in range(3)]  # much longer: 800 frames
    table = aqtrack.predict(store.run_id, written(long_table(seqs, channels), tmp_path / "mixed.csv"))

    network = best_network(store.run_id, tmp_path)
    got = probabilities(table, classes)
    np.testing.assert_allclose(got, np.stack([alone(network, s) for s in seqs]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert table["predicted"].tolist() == [classes[k] for k in got.argmax(axis=1)]
    assert table["sample_id"].tolist() == [f"r{i:02d}" for i in range(len(seqs))]

    # The 23-frame recording alone in its file scores as it did among 800-frame ones.
    single = aqtrack.predict(store.run_id, written(long_table(seqs[1:2], channels), tmp_path / "one.csv"))
    np.testing.assert_allclose(probabilities(single, classes)[0], got[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("source", [f"models:/{MODEL}/1", f"models:/{MODEL}@champion", "runs:/{run}/model"])
def test_the_registered_pt2_model_scores_like_the_run_it_came_from(store, tmp_path, capsys, source):
    source = source.format(run=store.run_id)
    x, _, classes, channels = synthetic(6, seed=3)
    seqs = [x[i, : 100 - 15 * i] for i in range(6)]
    path = written(long_table(seqs, channels), tmp_path / "new.csv")

    assert main(["predict", source, str(path), "-o", str(tmp_path / "p.csv")]) == 0

    summary = capsys.readouterr().out.splitlines()
    assert summary == [
        f"6 recordings scored with {source} (run {store.run_id}, best epoch {store.best_epoch}) "
        f"-> {tmp_path / 'p.csv'}"
    ]
    from_model = pd.read_csv(tmp_path / "p.csv")
    from_run = aqtrack.predict(store.run_id, path)
    np.testing.assert_allclose(
        probabilities(from_model, classes), probabilities(from_run, classes), rtol=0, atol=1e-5
    )
    assert from_model["predicted"].tolist() == from_run["predicted"].tolist()


def test_a_long_csv_without_labels_gives_one_row_per_recording_with_its_own_columns(store, tmp_path, capsys):
    x, _, classes, channels = synthetic(5, seed=1)
    seqs = [x[i, : 30 + 17 * i] for i in range(5)]
    per_sample = {
        "subject": ["ann", "ann", "bob", "bob", ""],  # the last: who, nobody knows
        "side": list("LRLRL"),
        "session": [1, 2, 1, 2, 1],
    }
    path = written(long_table(seqs, channels, **per_sample), tmp_path / "unlabelled.csv")

    assert main(["predict", store.run_id, str(path)]) == 0

    out, err = capsys.readouterr()
    table = pd.read_csv(io.StringIO(out))
    assert list(table.columns) == [
        "sample_id",
        "subject",
        "side",
        "session",
        "predicted",
        *(f"p_{c}" for c in classes),
    ]
    assert table["subject"].fillna("").tolist() == per_sample["subject"]
    assert table["side"].tolist() == per_sample["side"] and table["session"].tolist() == per_sample["session"]
    assert f"5 recordings scored with run {store.run_id} (best epoch {store.best_epoch})" in err
    assert "accuracy" not in err
    assert aqtrack.predict(store.run_id, path)["subject"].isna().tolist() == [False] * 4 + [True]  # not ''


def test_labels_give_accuracy_and_balanced_accuracy_as_scikit_learn_computes_them(store, tmp_path, capsys):
    x, y, classes, channels = synthetic(12, seed=2)
    names = [classes[k] for k in y]
    csv = written(long_table(list(x), channels, labels=names), tmp_path / "labelled.csv")
    out = tmp_path / "predictions.csv"

    assert main(["predict", store.run_id, str(csv), "-o", str(out)]) == 0

    table = pd.read_csv(out)
    assert table["label"].tolist() == names
    acc = accuracy_score(table["label"], table["predicted"])
    balanced = balanced_accuracy_score(table["label"], table["predicted"])
    assert capsys.readouterr().out.splitlines() == [
        f"12 recordings scored with run {store.run_id} (best epoch {store.best_epoch}) -> {out}",
        f"accuracy {acc:.4f}, balanced accuracy {balanced:.4f} (12 labelled recordings)",
    ]
    # Integer labels are class indices; with the CSV on stdout the scores go to stderr.
    np.savez(tmp_path / "labelled.npz", X=x, y=y)
    assert main(["predict", store.run_id, str(tmp_path / "labelled.npz")]) == 0
    stdout, stderr = capsys.readouterr()
    assert pd.read_csv(io.StringIO(stdout))["label"].tolist() == names
    assert f"accuracy {acc:.4f}, balanced accuracy {balanced:.4f} (12 labelled recordings)" in stderr


def test_a_partly_labelled_file_scores_every_recording_and_the_labelled_ones_alone(store, tmp_path, capsys):
    x, y, classes, channels = synthetic(10, seed=9)
    names = [classes[k] if i % 2 == 0 else "" for i, k in enumerate(y)]  # 5 recordings without a label
    csv = written(long_table(list(x), channels, labels=names), tmp_path / "partly.csv")
    out = tmp_path / "predictions.csv"

    assert main(["predict", store.run_id, str(csv), "-o", str(out)]) == 0

    table = pd.read_csv(out)
    assert len(table) == 10 and table["label"].isna().tolist() == [i % 2 == 1 for i in range(10)]
    labelled = table.dropna(subset=["label"])
    acc = accuracy_score(labelled["label"], labelled["predicted"])
    balanced = balanced_accuracy_score(labelled["label"], labelled["predicted"])
    line = f"accuracy {acc:.4f}, balanced accuracy {balanced:.4f} (5 labelled recordings of 10)"
    stdout, stderr = capsys.readouterr()
    assert stdout.splitlines() == [
        f"10 recordings scored with run {store.run_id} (best epoch {store.best_epoch}) -> {out}",
        line,
    ]
    assert "trained or selected on" not in stderr  # no subjects: nothing to say about them
    # .npz: y holds NaN (class indices) or '' (class names) for a recording without a label.
    for unlabelled in (np.where(np.arange(10) % 2 == 0, y, np.nan), np.array(names)):
        np.savez(tmp_path / "partly.npz", X=x, y=unlabelled)
        result = predictions.score(store.run_id, tmp_path / "partly.npz")
        assert result.lines(None)[1:] == [line]
        assert result.table["label"].isna().tolist() == [i % 2 == 1 for i in range(10)]


def _run_subjects(run_id: str, tmp_path: Path) -> dict[str, list[str]]:
    """The subjects of the run's train, val and test splits, from its dataset_stats.json."""
    path = MlflowClient().download_artifacts(run_id, names.DATASET_STATS_ARTIFACT, str(tmp_path))
    stats = json.loads(Path(path).read_text())
    return {name: stats[name]["subjects"] for name in ("train", "val", "test")}


@pytest.mark.parametrize("source", ["{run}", f"models:/{MODEL}/1"])
def test_recordings_of_subjects_the_run_trained_or_selected_on_are_counted_and_the_others_scored_apart(
    store, tmp_path, capsys, source
):
    source = source.format(run=store.run_id)
    subjects = _run_subjects(store.run_id, tmp_path)
    (a, b), val, test = subjects["train"][:2], subjects["val"][0], subjects["test"][0]
    x, y, classes, channels = synthetic(10, seed=10)
    who = [a, a, a, b, val, val, test, test, test, a]
    names = [classes[k] for k in y[:9]] + [""]  # the unlabelled one is not counted, whoever it is
    path = written(long_table(list(x), channels, labels=names, subject=who), tmp_path / "mixed.csv")
    out = tmp_path / "predictions.csv"

    assert main(["predict", source, str(path), "-o", str(out)]) == 0

    table = pd.read_csv(out)
    labelled, held = table.iloc[:9], table.iloc[6:9]
    scores = [
        (accuracy_score(t["label"], t["predicted"]), balanced_accuracy_score(t["label"], t["predicted"]))
        for t in (labelled, held)
    ]
    stdout, stderr = capsys.readouterr()
    assert stdout.splitlines()[1:] == [
        f"accuracy {scores[0][0]:.4f}, balanced accuracy {scores[0][1]:.4f} (9 labelled recordings of 10; "
        "6 of subjects the run trained or selected on)",
        f"accuracy on the 3 recordings of subjects the run never saw: {scores[1][0]:.4f}, "
        f"balanced accuracy {scores[1][1]:.4f}",
    ]
    warnings = [line for line in stderr.splitlines() if "trained or selected on" in line]
    assert len(warnings) == 1, stderr
    seen = f"({a!r}, {b!r}, {val!r})"
    assert warnings[0].startswith(
        f"6 of the 9 labelled recordings are of subjects the run trained or selected on {seen}"
    )

    # Only subjects the run never saw: said in the summary, no warning.
    only_new = written(
        long_table(list(x[:3]), channels, labels=names[:3], subject=[test] * 3), tmp_path / "new.csv"
    )
    result = predictions.score(source, only_new)
    assert result.lines(None)[1].endswith("(3 labelled recordings, all of subjects the run never saw)")
    assert len(result.lines(None)) == 2


def test_without_the_training_runs_subjects_nothing_is_said_about_them(store, tmp_path, capsys, monkeypatch):
    subjects = _run_subjects(store.run_id, tmp_path)
    x, y, classes, channels = synthetic(4, seed=11)
    who = [subjects["train"][0]] * 4
    path = written(
        long_table(list(x), channels, labels=[classes[k] for k in y], subject=who), tmp_path / "new.csv"
    )
    real = exports.load_logged_network

    def from_elsewhere(*args):  # a model whose run is not in this store
        return dataclasses.replace(real(*args), run_id="0" * 32)

    monkeypatch.setattr(exports, "load_logged_network", from_elsewhere)
    assert main(["predict", f"models:/{MODEL}/1", str(path)]) == 0

    stderr = capsys.readouterr().err
    assert "(4 labelled recordings)" in stderr and "subjects" not in stderr
    # A run trained on data without subjects cannot tell either; one with them trained on train and val.
    assert predictions.trained_subjects({"train": {"total": 64}, "val": {"total": 32}}) is None
    both = {"train": {"subjects": ["a", "b"]}, "val": {"subjects": ["c"]}, "test": {"subjects": ["d"]}}
    assert predictions.trained_subjects(both) == {"a", "b", "c"}


def test_missing_values_are_filled_by_the_runs_policy_and_refused_by_a_refusing_run(store, tmp_path, capsys):
    x, _, classes, channels = synthetic(2, seed=4)
    table = long_table(list(x), channels)
    first = table["sample_id"] == "r00"
    table.loc[first & table["frame"].between(10, 14), f"ch_{channels[2]}"] = np.nan  # NaN inside
    table = table[~(first & (table["frame"] == 50))]  # a skipped frame: missing in every channel
    path = written(table, tmp_path / "gappy.csv")

    scored = aqtrack.predict(store.run_id, path)

    filled = x[0].copy()
    filled[10:15, 2] = np.interp(np.arange(10, 15), [9, 15], x[0, [9, 15], 2])  # linear over frames
    filled[50] = (x[0, 49] + x[0, 51]) / 2
    network = best_network(store.run_id, tmp_path)
    np.testing.assert_allclose(probabilities(scored, classes)[0], alone(network, filled), rtol=0, atol=1e-5)

    assert main(["predict", store.refusing, str(path)]) == 2
    line = error_line(capsys)
    assert "13 missing value(s)" in line and "trained with missing values refused (--missing refuse)" in line


def ts_file(path: Path, seqs: list[np.ndarray]) -> Path:
    """An unlabelled aeon .ts file (`@classLabel false`), values written in full precision."""
    header = ["@problemName new", "@timeStamps false", "@missing false", "@univariate false"]
    header += [f"@dimensions {seqs[0].shape[1]}", "@equalLength false", "@classLabel false", "@data"]
    lines = [":".join(",".join(repr(float(v)) for v in s[:, j]) for j in range(s.shape[1])) for s in seqs]
    path.write_text("\n".join(header + lines) + "\n")
    return path


def test_channels_match_by_name_in_any_column_order_and_by_count_where_the_file_has_no_names(store, tmp_path):
    x, _, classes, channels = synthetic(4, seed=5)
    seqs = [x[i, : 100 - 20 * i] for i in range(4)]
    table = long_table(seqs, channels)
    reference = probabilities(
        aqtrack.predict(store.run_id, written(table, tmp_path / "ordered.csv")), classes
    )

    shuffled = table[["sample_id", "frame", *reversed([f"ch_{c}" for c in channels])]]
    by_name = aqtrack.predict(store.run_id, written(shuffled, tmp_path / "shuffled.csv"))
    np.savez(tmp_path / "padded.npz", X=pad_sequences(seqs)[0])  # unnamed channels, no labels
    by_count = aqtrack.predict(store.run_id, tmp_path / "padded.npz")

    np.testing.assert_allclose(probabilities(by_name, classes), reference, rtol=0, atol=1e-6)
    np.testing.assert_allclose(probabilities(by_count, classes), reference, rtol=0, atol=1e-6)
    assert by_count["sample_id"].tolist() == ["0", "1", "2", "3"]
    pytest.importorskip("aeon")
    from_ts = aqtrack.predict(store.run_id, ts_file(tmp_path / "new.ts", seqs))
    np.testing.assert_allclose(probabilities(from_ts, classes), reference, rtol=0, atol=1e-6)


# --- refusals ------------------------------------------------------------------------------------------


def _files(folder: Path) -> Path:
    """A good file and the bad ones the refusals need, in `folder`."""
    x, _, classes, channels = synthetic(4, seed=6)
    good = long_table(list(x[:, :40]), channels)
    written(good, folder / "good.csv")
    written(good.drop(columns=f"ch_{channels[0]}").assign(ch_heel=1.0), folder / "channels.csv")
    labels = [classes[0], "deep_squat", classes[1], "deep_squat"]
    written(long_table(list(x[:, :40]), channels, labels=labels), folder / "labels.csv")
    partly = long_table(list(x[:, :40]), channels, labels=list(classes[:4]))
    partly.loc[(partly["sample_id"] == "r02") & (partly["frame"] >= 20), "label"] = None
    written(partly, folder / "partly.csv")
    (folder / "notes.txt").write_text("not data\n")
    return folder


REFUSALS: dict[str, tuple[Callable[[str, Path], list[str]], str]] = {
    "no such file": (lambda run, f: [run, str(f / "nope.csv")], "nope.csv: no such file; pass a .csv"),
    "unsupported format": (lambda run, f: [run, str(f / "notes.txt")], "unsupported file type '.txt'; use a"),
    "not a source": (lambda run, f: ["last-run", str(f / "good.csv")], "not a run id or a model URI; pass"),
    "unknown run": (
        lambda run, f: ["0" * 32, str(f / "good.csv")],
        "no such run in sqlite:",
    ),
    "unknown model": (
        lambda run, f: ["models:/nope/1", str(f / "good.csv")],
        "models:/nope/1: not found in sqlite:",
    ),
    "unknown version": (
        lambda run, f: [f"models:/{MODEL}/9", str(f / "good.csv")],
        "check the model's name and version (or alias)",
    ),
    "channels": (
        lambda run, f: [run, str(f / "channels.csv")],
        "channel columns do not match the run's; rename or drop them: missing 'ch_left_hip_flexion'; not "
        "the run's 'ch_heel'",
    ),
    "unknown label": (
        lambda run, f: [run, str(f / "labels.csv")],
        "label(s) 'deep_squat' are not classes of the run ('good_form', 'shallow_depth', 'asymmetric',",
    ),
    "label empty on some rows": (
        lambda run, f: [run, str(f / "partly.csv")],
        "label is empty on some rows of sample_id(s) 'r02' and set on others; give each its label on every "
        "row, or on none to score it unlabelled",
    ),
    "-o in a missing folder": (
        lambda run, f: [run, str(f / "good.csv"), "-o", str(f / "no" / "p.csv")],
        "no/p.csv: folder",
    ),
    "-o a folder": (lambda run, f: [run, str(f / "good.csv"), "-o", str(f)], "is a folder; give a file name"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_each_refusal_is_one_error_line_naming_the_problem_and_the_fix(store, tmp_path, capsys, case):
    args, expected = REFUSALS[case]
    assert main(["predict", *args(store.run_id, _files(tmp_path))]) == 2
    assert expected in error_line(capsys)
    assert not (tmp_path / "no").exists()


def test_a_run_without_a_best_checkpoint_and_a_model_aqtrack_did_not_log_are_refused(tmp_path, capsys):
    import mlflow.pytorch

    client = MlflowClient()  # this test's own store: these need writing
    empty = client.create_run(client.create_experiment("elsewhere")).info.run_id
    example = np.zeros((2, 8), dtype=np.float32)
    foreign = mlflow.pytorch.log_model(
        torch.nn.Linear(8, 4), name="linear", serialization_format="pt2", input_example=example
    ).model_id
    files = _files(tmp_path)

    assert main(["predict", empty, str(files / "good.csv")]) == 2
    line = error_line(capsys)
    assert f"predict {empty}: no verified best checkpoint" in line and "score another run" in line
    assert main(["predict", f"models:/{foreign}", str(files / "good.csv")]) == 2
    assert "not a network logged by aqtrack (its MLflow metadata lacks class_names" in error_line(capsys)


# --- the store, the output file, the command line -----------------------------------------------------


def _store_state(trained: Trained) -> dict:
    """What predicting must leave as it is: the database's bytes, every artifact file, and (readably)
    the runs, their artifacts, models and registered versions."""
    client = MlflowClient(trained.uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = tracking_store.newest_runs(client, experiments)
    files = sorted(
        (str(p.relative_to(trained.root)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in (trained.root / "mlruns").rglob("*")
        if p.is_file()
    )
    return {
        "db": hashlib.sha256((trained.root / "mlflow.db").read_bytes()).hexdigest(),
        "files": files,
        "runs": sorted((r.info.run_id, r.info.status, r.info.end_time) for r in runs),
        "artifacts": tracking_store.artifact_tree(client, trained.run_id),
        "models": sorted(m.model_id for m in client.search_logged_models(experiments)),
        "versions": [(v.name, v.version) for v in client.search_model_versions()],
    }


def test_predicting_writes_nothing_to_the_tracking_store(store, tmp_path, capsys):
    before = _store_state(store)
    x, y, classes, channels = synthetic(4, seed=7)
    path = written(long_table(list(x), channels, labels=[classes[k] for k in y]), tmp_path / "new.csv")

    aqtrack.predict(store.run_id, path, output=tmp_path / "a.csv")
    aqtrack.predict(f"models:/{MODEL}/1", path)
    assert main(["predict", f"runs:/{store.run_id}/model", str(path)]) == 0
    assert main(["predict", store.refusing, str(_files(tmp_path) / "labels.csv")]) == 2

    assert _store_state(store) == before
    assert len(before["runs"]) == 2


def test_the_output_csv_is_the_returned_table_and_is_replaced_whole_or_not_at_all(
    store, tmp_path, monkeypatch
):
    x, _, _, channels = synthetic(3, seed=8)
    path = written(long_table(list(x), channels), tmp_path / "new.csv")
    out = tmp_path / "p.csv"
    table = aqtrack.predict(store.run_id, path, output=out)
    pd.testing.assert_frame_equal(pd.read_csv(out, dtype={"sample_id": str}), table)

    def full_disk(self, target, **kwargs):  # target: the open temporary file (aqtrack.atomic)
        target.write(b"sample_id,pre")  # half a file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    before = out.read_bytes()
    with pytest.raises(ConfigError, match=r"-o .*p\.csv: not writable \(No space left on device\)"):
        aqtrack.predict(store.run_id, path, output=out)
    assert out.read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_predict_help_imports_nothing_heavy_and_aqtrack_predict_stays_a_function():
    code = f"""
import contextlib, io, sys
from aqtrack.cli import build_parser

with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        build_parser().parse_args(["predict", "--help"])
    except SystemExit as e:
        assert e.code == 0, e.code
assert "models:/NAME/VERSION" in out.getvalue() and "--output" in out.getvalue()
heavy = ",".join(m for m in {HEAVY!r} if m in sys.modules)
import aqtrack, aqtrack.jobs.predictions  # importing the module must not replace the function
assert callable(aqtrack.predict) and "predict" in aqtrack.__all__
print(heavy)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"heavy modules imported: {result.stdout.strip()}"
