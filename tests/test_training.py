"""End to end on a real sqlite MLflow store: metrics, artifacts, resume, the legacy report."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fakes import RecordingTracker
from mlflow import MlflowClient

import aqtrack
from aqtrack import cli
from aqtrack.config import Config
from aqtrack.data.dataset import load_data
from aqtrack.names import BEST, GRAD_NORM, GRAD_NORM_MAX, LAST, LEGACY_KEYS, LR, METRIC_KEYS, REPORT_FILE
from aqtrack.training import loop
from aqtrack.training.checkpoint import TrainState
from aqtrack.training.loop import build_trainer, fit, train_one_epoch


def metric_points(run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient()
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in METRIC_KEYS
    }


def last_weights(run_id: str, tmp_path: Path) -> dict[str, torch.Tensor]:
    path = MlflowClient().download_artifacts(run_id, f"checkpoints/{LAST}", str(tmp_path / run_id))
    return torch.load(path, weights_only=True)["model"]


class SimulatedCrash(Exception):
    """Stands for the process dying (power cut, OOM kill) at a chosen point."""


@contextlib.contextmanager
def checkpointing_raises(epoch: int, error: BaseException) -> Iterator[None]:
    """Within the block, writing the checkpoints of `epoch` raises `error` (before any file is written)."""
    real_write = loop.write_checkpoints

    def write(state, directory, names):
        if state.epoch == epoch:
            raise error
        return real_write(state, directory, names)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "write_checkpoints", write)
        yield


def test_every_metric_has_one_point_per_epoch_with_continuous_steps(tiny):
    result = aqtrack.train(**tiny)

    points = metric_points(result.run_id)
    for key in METRIC_KEYS:
        assert [step for step, _ in points[key]] == [1, 2, 3, 4], key
        assert [v for _, v in points[key]] == pytest.approx(result.history.metrics[key]), key
    run = MlflowClient().get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["rounds"] == "2" and run.data.params["lr"] == "0.001"
    assert run.data.params["svm"] == "false" and run.data.params["system_metrics"] == "false"  # as typed
    assert set(Config().to_dict()) <= set(run.data.params)
    assert run.data.tags["aqtrack.checkpoint_epoch"] == "4"


def test_checkpoints_are_artifacts_that_load_with_weights_only(tiny, tmp_path):
    result = aqtrack.train(**tiny)

    client = MlflowClient()
    names = {Path(f.path).name for f in client.list_artifacts(result.run_id, "checkpoints")}
    assert {LAST, BEST, "action_quality_round_1_epoch_2.pt", "action_quality_round_2_epoch_2.pt"} <= names
    assert "dataset_stats.json" in {f.path for f in client.list_artifacts(result.run_id)}
    last = torch.load(
        client.download_artifacts(result.run_id, f"checkpoints/{LAST}", str(tmp_path)), weights_only=True
    )
    assert last["epoch"] == 4 and last["round"] == 2
    assert len(last["history"]["metrics"]["val_acc"]) == 4
    assert {"model", "optimizer", "scheduler", "rng", "config", "best_val_acc"} <= set(last)
    best = torch.load(
        client.download_artifacts(result.run_id, f"checkpoints/{BEST}", str(tmp_path)), weights_only=True
    )
    assert best["epoch"] == result.best_epoch
    assert best["best_val_acc"] == result.best_val_acc == max(result.history.metrics["val_acc"])


def test_resume_to_more_rounds_equals_an_uninterrupted_run(tiny, tmp_path):
    straight = aqtrack.train(**tiny)
    first = aqtrack.train(**{**tiny, "rounds": 1})
    resumed = aqtrack.train(resume=first.run_id, rounds=2)

    assert resumed.run_id == first.run_id
    assert metric_points(resumed.run_id) == metric_points(straight.run_id)
    a, b = last_weights(resumed.run_id, tmp_path), last_weights(straight.run_id, tmp_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert MlflowClient().get_run(first.run_id).data.tags["aqtrack.resume_count"] == "1"


def test_crash_before_checkpoint_sends_nothing_of_the_epoch_and_resume_keeps_one_point_per_epoch(tiny):
    straight = aqtrack.train(**tiny)
    crash = SimulatedCrash("crashed while checkpointing epoch 3")
    with checkpointing_raises(3, crash), pytest.raises(SimulatedCrash):
        aqtrack.train(**tiny)
    client = MlflowClient()
    crashed = client.search_runs(
        [client.get_experiment_by_name("action-quality").experiment_id], "attributes.status = 'FAILED'"
    )[0]
    assert crashed.data.tags["aqtrack.checkpoint_epoch"] == "2"
    assert [s for s, _ in metric_points(crashed.info.run_id)["val_acc"]] == [1, 2]  # metrics follow files
    assert "SimulatedCrash" in crashed.data.tags["aqtrack.error"]
    # Metrics can still get ahead of the checkpoint a resume starts from (when last.pt is refused
    # and an older checkpoint is used): the epochs trained again must not log their points twice.
    for key, points in metric_points(straight.run_id).items():
        client.log_metric(crashed.info.run_id, key, dict(points)[3], step=3)

    resumed = aqtrack.train(resume=crashed.info.run_id)

    assert metric_points(resumed.run_id) == metric_points(straight.run_id)
    assert client.get_run(resumed.run_id).info.status == "FINISHED"


def test_ctrl_c_marks_the_run_killed_and_it_resumes(tiny):
    with checkpointing_raises(3, KeyboardInterrupt()), pytest.raises(KeyboardInterrupt):
        aqtrack.train(**tiny)
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("action-quality").experiment_id])
    assert run.info.status == "KILLED"

    resumed = aqtrack.train(resume=run.info.run_id)

    assert resumed.epochs == 4 and client.get_run(run.info.run_id).info.status == "FINISHED"
    assert [s for s, _ in metric_points(run.info.run_id)["lr"]] == [1, 2, 3, 4]


def test_resume_auto_continues_the_newest_unfinished_run(tiny):
    with checkpointing_raises(2, SimulatedCrash("stop")), pytest.raises(SimulatedCrash):
        aqtrack.train(**tiny)

    resumed = aqtrack.train(resume="auto", **tiny)
    again = aqtrack.train(resume="auto", **tiny)  # nothing unfinished left: a new run

    assert resumed.epochs == 4
    assert [s for s, _ in metric_points(resumed.run_id)["train_loss"]] == [1, 2, 3, 4]
    assert again.run_id != resumed.run_id and again.resumed_from is None


def test_logged_lr_is_what_the_optimizer_used_in_that_epoch(tiny):
    cfg = Config.from_dict({**tiny, "rounds": 2, "epochs_per_round": 3})
    data = load_data("synthetic", n_train=64, n_val=32, val_fraction=0.2, seed=0)
    trainer = build_trainer(cfg, data, torch.device("cpu"))
    used: list[float] = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    tracker = RecordingTracker()

    fit(trainer, TrainState(config=cfg.to_dict(), model_spec={}), tracker, Path(tiny["output_dir"]))

    steps_per_epoch = len(used) // 6
    for epoch, logged in tracker.metrics[LR].items():
        during = used[(epoch - 1) * steps_per_epoch : epoch * steps_per_epoch]
        assert set(during) == {logged}, epoch
    lrs = [tracker.metrics[LR][e] for e in range(1, 7)]
    assert lrs[0] == lrs[3] == 1e-3  # the cosine cycle restarts with each round
    assert lrs[0] > lrs[1] > lrs[2] >= 1e-6


def test_grad_norm_is_the_pre_clip_norm_of_the_batch_gradient(tiny):
    cfg = Config.from_dict({**tiny, "n_train": 16, "batch_size": 16, "dropout": 0.0, "max_grad_norm": 1e-3})
    data = load_data("synthetic", n_train=16, n_val=32, val_fraction=0.2, seed=0)
    trainer = build_trainer(cfg, data, torch.device("cpu"))
    reference = copy.deepcopy(trainer.model).train()
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    grads = torch.autograd.grad(F.cross_entropy(reference(x), y), list(reference.parameters()))
    expected = torch.sqrt(sum(g.pow(2).sum() for g in grads)).item()

    metrics, _ = train_one_epoch(trainer)

    assert expected > 1e-3  # so clipping was active, and the logged norm must be the pre-clip one
    assert metrics[GRAD_NORM] == pytest.approx(expected, rel=1e-5)
    assert metrics[GRAD_NORM_MAX] == pytest.approx(expected, rel=1e-5)


def test_legacy_report_has_the_visualizers_keys_and_the_whole_history(tiny, tmp_path):
    first = aqtrack.train(**{**tiny, "rounds": 1})
    resumed = aqtrack.train(resume=first.run_id, rounds=2)

    assert resumed.report_path == Path(tiny["output_dir"]) / first.run_id / REPORT_FILE
    report = json.loads(resumed.report_path.read_text())
    assert set(LEGACY_KEYS) <= set(report)
    assert report["current_epoch"] == 4 and report["epochs"] == [1, 2, 3, 4]
    for key in ("control_losses", "grad_norms", "learning_rates", "val_acc", "train_acc", "val_loss"):
        assert len(report[key]) == 4 and all(isinstance(v, float) for v in report[key]), key
    assert report["total_batches"] == 4 * 4  # 64 samples / 16 per batch, 4 epochs
    assert len(report["batch_losses"]) == 16 and all(isinstance(v, float) for v in report["batch_losses"])
    assert report["dataset_stats"]["train"]["total"] == 64
    assert report["dataset_stats"]["source"] == "synthetic"
    assert report["run_id"] == first.run_id
    logged = MlflowClient().download_artifacts(first.run_id, REPORT_FILE, str(tmp_path / "dl"))
    assert json.loads(Path(logged).read_text())["control_losses"] == report["control_losses"]


def test_report_rebuilt_from_mlflow_metrics_matches_the_one_written_in_training(tiny, tmp_path):
    result = aqtrack.train(**tiny)
    written = json.loads(result.report_path.read_text())

    path = aqtrack.rebuild_report(result.run_id, tmp_path / "rebuilt")

    rebuilt = json.loads(path.read_text())
    assert set(rebuilt) == set(written)
    for key in set(written) - {"timestamp", "dataset_stats", "run_id"}:
        assert rebuilt[key] == pytest.approx(written[key]), key
    assert rebuilt["dataset_stats"] == written["dataset_stats"]
    assert rebuilt["run_id"] == written["run_id"] == result.run_id


def test_report_command_writes_the_report_of_a_run(capsys, tiny, tmp_path):
    result = aqtrack.train(**tiny)
    capsys.readouterr()
    assert cli.main(["report", result.run_id, "-o", str(tmp_path / "rebuilt")]) == 0
    written = Path(capsys.readouterr().out.strip())
    assert written == tmp_path / "rebuilt" / "experiment_report.json" and written.is_file()
