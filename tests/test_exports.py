"""What a finished run exports to MLflow: the best network as a pyfunc-loadable (and registrable) model,
its datasets, its figures, and all of it exactly once when the run is killed while finishing."""

from __future__ import annotations

import json
import re
import signal
import tempfile
import zipfile
from pathlib import Path

import mlflow.artifacts
import mlflow.models
import mlflow.pyfunc
import mlflow.pytorch
import numpy as np
import pytest
import torch
from crashes import flags, run_aqtrack
from mlflow import MlflowClient
from mlflow.pyfunc.scoring_server import infer_and_parse_data
from padding import pad_with_nan

import aqtrack
from aqtrack.data.dataset import lengths_of, load_data
from aqtrack.data.missing import fill_missing
from aqtrack.names import (
    BEST,
    CONFUSION_ARTIFACT,
    CURVES_ARTIFACT,
    NETWORK_MODEL,
    SVM_MODEL,
    SVM_VAL_ACC,
    SVM_VAL_F1,
    TAG_BEST_EPOCH,
)
from aqtrack.tracking.exports import NetworkInfo, load_logged_network, log_network, read_pt2_weights
from aqtrack.training.model import ModelSpec, NanPaddedNet, build_model

PNG = b"\x89PNG\r\n\x1a\n"


def best_network(run_id: str, tmp_path: Path) -> tuple[torch.nn.Module, int]:
    path = MlflowClient().download_artifacts(run_id, f"checkpoints/{BEST}", str(tmp_path / "best"))
    best = torch.load(path, weights_only=True)
    network = build_model(ModelSpec(**best["model_spec"]))
    network.load_state_dict(best["model"])
    return network.eval(), best["epoch"]


def logged_models(run_id: str, name: str) -> list:
    client = MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models([experiment_id], f"name = '{name}'")
    return [m for m in found if m.source_run_id == run_id]


def validation_batch(tiny: dict) -> np.ndarray:
    data = load_data("synthetic", n_train=tiny["n_train"], n_val=tiny["n_val"], val_fraction=0.2, seed=0)
    return data.x_val[:5]


def test_pyfunc_model_predicts_like_the_best_checkpoint_and_is_registered(tiny, tmp_path):
    result = aqtrack.train(**{**tiny, "log_model": True}, register="action-quality-net")

    x = validation_batch(tiny)
    model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/{NETWORK_MODEL}")
    logits = model.predict(x)
    network, best_epoch = best_network(result.run_id, tmp_path)
    with torch.no_grad():
        expected = network(torch.from_numpy(x)).numpy()
    assert logits.shape == (5, 4)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    assert (logits.argmax(axis=1) == expected.argmax(axis=1)).all()
    signature = model.metadata.signature
    assert signature.inputs.inputs[0].shape == (-1, -1, 8) and signature.outputs.inputs[0].shape == (-1, 4)

    (logged,) = logged_models(result.run_id, NETWORK_MODEL)
    assert logged.tags[TAG_BEST_EPOCH] == str(best_epoch) == str(result.best_epoch)
    (version,) = MlflowClient().search_model_versions("name = 'action-quality-net'")
    assert version.source == f"models:/{logged.model_id}" and version.run_id == result.run_id
    registered = mlflow.pyfunc.load_model("models:/action-quality-net/1")
    np.testing.assert_allclose(registered.predict(x), expected, rtol=1e-5, atol=1e-6)


def test_without_log_model_a_run_has_no_network_model_and_predicts_from_its_checkpoint(tiny, tmp_path):
    result = aqtrack.train(**{**tiny, "log_model": False})

    assert logged_models(result.run_id, NETWORK_MODEL) == []
    assert "test_acc" in MlflowClient().get_run(result.run_id).data.metrics  # the rest of the stage ran
    x = validation_batch(tiny)
    np.savez(tmp_path / "new.npz", X=x)
    table = aqtrack.predict(result.run_id, tmp_path / "new.npz")
    network, _ = best_network(result.run_id, tmp_path)
    with torch.no_grad():
        expected = torch.softmax(network(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(table.filter(like="p_").to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_the_logged_network_takes_any_batch_and_length_with_trailing_nan_frames():
    network = trained_like_network()
    example = load_data("synthetic", n_train=4, n_val=4, val_fraction=0.2, seed=0).x_val[:2]
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("export")).info.run_id

    about = NetworkInfo(
        ("good", "shallow", "asym", "valgus"), tuple(f"angle_{i}" for i in range(8)), "refuse"
    )
    model_id = log_network(client, run_id, network, example, tags={}, about=about)

    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/{NETWORK_MODEL}")
    metadata = model.metadata.metadata
    assert metadata["class_names"] == ["good", "shallow", "asym", "valgus"]  # the order of the logits
    assert metadata["channel_names"][0] == "angle_0" and metadata["missing"] == "refuse"
    exported = mlflow.pytorch.load_model(f"models:/{model_id}")  # the pt2 graph itself
    rng = np.random.default_rng(0)
    for frames in (50, 100, 300):
        lengths = [frames, frames // 2, 1, 37, frames - 3]
        x = pad_with_nan(rng.normal(1.0, 2.0, (5, frames, 8)).astype(np.float32), np.array(lengths))
        logits = model.predict(x)  # the pyfunc's schema enforcement lets NaN through
        with torch.no_grad():
            expected = network(torch.from_numpy(x), torch.tensor(lengths)).numpy()
            alone = [network(torch.from_numpy(x[i : i + 1, :n])).numpy()[0] for i, n in enumerate(lengths)]
            graph = exported(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(logits, np.stack(alone), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(graph, logits, rtol=1e-6, atol=1e-6)
    assert model.predict(x[:1]).shape == (1, 4)  # a single sequence too
    # A value lost inside a recording (NaN within its length) is filled as training data is.
    holes = x.copy()
    holes[0, 10:13, 2], holes[3, 0, 5] = np.nan, np.nan
    filled, count = fill_missing(holes, np.array(lengths), "interpolate")
    assert count == 4
    with torch.no_grad():
        expected = network(torch.from_numpy(filled), torch.tensor(lengths)).numpy()
    np.testing.assert_allclose(model.predict(holes), expected, rtol=1e-5, atol=1e-5)

    signature = model.metadata.signature
    spec = signature.inputs.inputs[0]
    assert spec.shape == (-1, -1, 8) and spec.type == np.dtype(np.float32)
    assert "NaN frames" in model.metadata.metadata["input"]
    shown = model.input_example
    assert shown.dtype == np.float32 and shown.shape == (2, 100, 8)
    assert lengths_of(shown).tolist() == [100, 50]  # the example shows two lengths, as NaN padding
    # A serving request carries the NaN frames as JSON nulls; the scoring server reads them back as NaN.
    request = json.loads(mlflow.models.convert_input_example_to_serving_input(shown))
    assert request["inputs"][1][-1] == [None] * 8
    parsed = infer_and_parse_data(request, signature.inputs)
    with torch.no_grad():
        expected = NanPaddedNet(network)(torch.from_numpy(shown)).numpy()
    np.testing.assert_allclose(model.predict(parsed), expected, rtol=1e-5, atol=1e-5)


def trained_like_network() -> torch.nn.Module:
    """A small network with non-trivial weights, normalisation and running statistics, in eval mode."""
    torch.manual_seed(0)
    network = build_model(ModelSpec(in_channels=8, num_classes=4, hidden=8, dropout=0.0))
    with torch.no_grad():
        network.mean.normal_()
        network.std.uniform_(0.5, 2.0)
        for name, buffer in network.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.3)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    return network.eval()


def _logged(tmp_path: Path) -> tuple[torch.nn.Module, str, Path]:
    """A trained-like network logged as an MLflow model: (network, its models:/ URI, its pt2 archive)."""
    network = trained_like_network()
    example = load_data("synthetic", n_train=4, n_val=4, val_fraction=0.2, seed=0).x_val[:2]
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("export")).info.run_id
    about = NetworkInfo(
        ("good", "shallow", "asym", "valgus"), tuple(f"angle_{i}" for i in range(8)), "refuse"
    )
    model_id = log_network(client, run_id, network, example, tags={TAG_BEST_EPOCH: "7"}, about=about)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=str(tmp_path / "dl")))
    return network, f"models:/{model_id}", local / "data" / "model.pt2"


def _rewritten(archive: Path, out: Path, change) -> Path:
    """A copy of the pt2 `archive` with each member's bytes passed through change(name, bytes)."""
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, change(info.filename, src.read(info.filename)))
    return out


def test_a_logged_network_is_rebuilt_from_its_weights_alone_and_scores_like_it(tmp_path):
    network, uri, _ = _logged(tmp_path)

    with tempfile.TemporaryDirectory() as tmp:
        logged = load_logged_network(MlflowClient(), uri, Path(tmp))

    assert (
        logged.about.class_names == ("good", "shallow", "asym", "valgus") and logged.about.missing == "refuse"
    )
    assert logged.best_epoch == 7
    x = pad_with_nan(
        np.random.default_rng(0).normal(size=(4, 60, 8)).astype(np.float32), np.array([60, 9, 33, 2])
    )
    with torch.no_grad():
        expected = NanPaddedNet(network)(torch.from_numpy(x)).numpy()
        rebuilt = NanPaddedNet(logged.network)(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(rebuilt, expected)


def test_reading_the_weights_never_runs_the_archives_graph_nor_unpickles(tmp_path):
    _, _, archive = _logged(tmp_path)
    marker = tmp_path / "ran"
    # torch.export.load passes each symbolic size to sympy.sympify, which evals it: this one writes a file.
    evil_size = f"Integer(len(open({str(marker)!r}, 'w').write('x') * 'a'))"

    def code_in_graph(name: str, data: bytes) -> bytes:
        if not name.endswith("models/model.json"):
            return data
        return data.replace(b'"expr_str": "', b'"expr_str": "' + evil_size.encode() + b" + ", 1)

    weights = read_pt2_weights(_rewritten(archive, tmp_path / "graph.pt2", code_in_graph))
    assert len(weights) == 25 and not marker.exists()

    def pickled_weight(name: str, data: bytes) -> bytes:
        return (
            data.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
            if name.endswith("config.json")
            else data
        )

    with pytest.raises(ValueError, match="is not stored as raw bytes"):
        read_pt2_weights(_rewritten(archive, tmp_path / "pickled.pt2", pickled_weight))


def test_train_validation_and_test_sets_are_the_runs_dataset_inputs_logged_once(tiny):
    first = aqtrack.train(**{**tiny, "rounds": 1, "log_model": True})
    aqtrack.train(resume=first.run_id, rounds=2)

    inputs = MlflowClient().get_run(first.run_id).inputs.dataset_inputs
    by_name = {d.dataset.name: d for d in inputs}
    assert sorted(by_name) == ["synthetic-test", "synthetic-train", "synthetic-val"]  # not again on resume
    contexts = {name: {t.key: t.value for t in d.tags}["mlflow.data.context"] for name, d in by_name.items()}
    assert contexts == {
        "synthetic-train": "training",
        "synthetic-val": "validation",
        "synthetic-test": "testing",
    }
    train = by_name["synthetic-train"].dataset
    assert '"seed": 0' in train.source and '"samples": 64' in train.source
    assert '"features_shape": [64, 100, 8]' in train.profile and train.digest
    # The resumed run trained on, and improved beyond, the first finish: its newest model is the new best.
    assert len(logged_models(first.run_id, NETWORK_MODEL)) in (1, 2)


def test_a_data_files_splits_are_dataset_inputs_named_after_it(tiny, tmp_path, recwarn):
    data = load_data("synthetic", n_train=tiny["n_train"], n_val=tiny["n_val"], val_fraction=0.2, seed=0)
    path = tmp_path / "squats.npz"
    split = np.array(["train"] * len(data.y_train) + ["val"] * len(data.y_val))
    np.savez(
        path,
        X=np.concatenate([data.x_train, data.x_val]),
        y=np.concatenate([data.y_train, data.y_val]),
        split=split,
    )

    result = aqtrack.train(**{**tiny, "svm": False}, data=str(path))

    inputs = MlflowClient().get_run(result.run_id).inputs.dataset_inputs
    assert sorted(d.dataset.name for d in inputs) == ["squats-train", "squats-val"]
    assert {d.dataset.source_type for d in inputs} == {"local"}
    assert all(str(path) in d.dataset.source for d in inputs)
    assert not [w for w in recwarn if "dataset source" in str(w.message)]


def test_figures_are_logged_and_the_curves_drawn_at_the_first_periodic_checkpoint(tiny, tmp_path):
    seen = []

    def plots_drawn(state):
        seen.append((state.epoch, (Path(tiny["output_dir"]) / state.run_id / CURVES_ARTIFACT).exists()))

    result = aqtrack.train(**tiny, callbacks=[plots_drawn])

    assert seen[:2] == [(1, False), (2, True)]  # checkpoint_interval 2
    client = MlflowClient()
    for artifact in (CURVES_ARTIFACT, CONFUSION_ARTIFACT):
        path = Path(client.download_artifacts(result.run_id, artifact, str(tmp_path / "dl")))
        assert path.read_bytes().startswith(PNG), artifact
        kept = Path(tiny["output_dir"]) / result.run_id / artifact  # in the run's local folder too
        assert kept.read_bytes() == path.read_bytes(), artifact


def test_killed_twice_while_finishing_then_resumed_has_one_of_each_model_and_svm_point(tiny_full, tmp_path):
    # The network model is READY, the SVM's files are uploaded but it is still PENDING.
    killed = run_aqtrack(tmp_path, "train", *flags(tiny_full), kill_at="model-uploaded:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("action-quality").experiment_id])
    run_id = run.info.run_id
    # The resume finishes again, and dies right after logging the SVM's metrics (its first metric batch).
    again = run_aqtrack(tmp_path, "train", "--resume", run_id, kill_at="logged:1")
    assert again.returncode == -signal.SIGKILL, again.stderr[-3000:]
    assert re.search(r"deleting model m-\w+ \(svm\): never finished", again.stderr), again.stderr[-3000:]

    done = run_aqtrack(tmp_path, "train", "--resume", run_id)

    assert done.returncode == 0, done.stderr[-3000:]
    assert "all 4 epochs were already trained" in done.stderr
    assert client.get_run(run_id).info.status == "FINISHED"
    for name in (NETWORK_MODEL, SVM_MODEL):
        (model,) = logged_models(run_id, name)
        assert str(model.status).endswith("READY"), name
    for key in (SVM_VAL_ACC, SVM_VAL_F1):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [4], key
    logits = mlflow.pyfunc.load_model(f"runs:/{run_id}/{NETWORK_MODEL}").predict(validation_batch(tiny_full))
    assert logits.shape == (5, 4)
