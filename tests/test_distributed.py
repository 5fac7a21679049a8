"""Multi-process training (torchrun, gloo on CPU), `--device` and `--amp`.

Real torchrun launches of `python -m aqtrack train` against a real sqlite store: a 2-process run is
stopped with SIGTERM, resumed by run id with 2 processes, and compared with a 1-process run.

Tolerance. The 2 processes train on exactly the global batches of the 1-process run (same order, same
sizes; batch statistics and the loss over the whole batch), so the difference is floating-point
reduction order: sums split in two and added up, gradients averaged by all-reduce. Measured on this
configuration: train_loss, grad_norm and grad_norm_max within 1.6e-7 relative, lr identical.
Validation differs more, 4e-5 relative (up to 1e-4 in other sizes): the convolutions' biases sit before
a BatchNorm, so their true gradient is zero and what they get is rounding noise, which Adam scales up
to learning-rate-sized steps; in training the BatchNorm cancels them, but the running means trail
them, so validation (which uses the running statistics) sees a little of that noise. Hence
TRAIN_RTOL 1e-5, VAL_RTOL 5e-3, accuracies equal to within one sample.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from crashes import flags
from mlflow import MlflowClient
from padding import variable_length

import aqtrack
from aqtrack import cli
from aqtrack.config import Config
from aqtrack.data.dataset import lengths_of, load_data
from aqtrack.errors import ConfigError
from aqtrack.names import GRAD_NORM, GRAD_NORM_MAX, LAST, LR, METRIC_KEYS, TRAIN_ACC, TRAIN_LOSS, VAL_ACC
from aqtrack.training import loop
from aqtrack.training.checkpoint import TrainState, load_checkpoint, save_checkpoint
from aqtrack.training.distributed import SINGLE, Shards, World, resolve_device, world_from_env
from aqtrack.training.loop import NullTracker
from aqtrack.training.precision import mixed, precision_for

TRAIN_RTOL, VAL_RTOL = 1e-5, 5e-3
# 67 training samples in batches of 16: a last batch of 3, shared 2 + 1; 33 validation samples, 17 + 16.
SETTINGS = {
    "n_train": 67,
    "n_val": 33,
    "hidden": 8,
    "rounds": 2,
    "epochs_per_round": 3,
    "batch_size": 16,
    "dropout": 0.0,
    "checkpoint_interval": 2,
    "svm": False,
    "log_model": False,
}
EPOCHS = SETTINGS["rounds"] * SETTINGS["epochs_per_round"]


def torchrun(cwd: Path, *args: str) -> subprocess.Popen:
    """`torchrun --standalone --nproc-per-node 2 -m aqtrack ARGS` (a free port of its own)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.Popen(
        [*command, "-m", "aqtrack", *args], cwd=cwd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def only_run() -> str:
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("action-quality").experiment_id])
    return run.info.run_id


def metric_points(run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient()
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in METRIC_KEYS}


def test_two_processes_stopped_and_resumed_by_run_id_match_one_process(tmp_path):
    stopped = torchrun(tmp_path, "train", *flags({**SETTINGS, "output_dir": tmp_path / "out"}))
    said = ""
    for line in stopped.stderr:  # SIGTERM to torchrun once the first epoch is published
        said += line
        if "round_epoch=1/3 " in line:
            stopped.send_signal(signal.SIGTERM)
            break
    said += stopped.communicate(timeout=120)[1]
    run_id = only_run()
    assert stopped.returncode != 0, said[-3000:]
    assert f"run {run_id} stopped; continue it with" in said and "interrupted (SIGTERM)" in said
    assert "aqtrack: error: rank 1: lost the other processes in epoch" in said  # one line, no traceback
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "KILLED", said[-3000:]
    published = int(run.data.tags["aqtrack.checkpoint_epoch"])
    assert 1 <= published < EPOCHS

    resumed = torchrun(tmp_path, "train", "--resume", run_id)
    out, err = resumed.communicate(timeout=120)

    assert resumed.returncode == 0, err[-3000:]
    assert out.count(f"run {run_id}: {EPOCHS} epochs") == 1  # rank 0 speaks for both
    assert err.count("round=2/2 round_epoch=3/3 ") == 1  # one progress line per epoch: rank 0's
    assert only_run() == run_id and client.get_run(run_id).info.status == "FINISHED"
    two = metric_points(run_id)
    for key, series in two.items():
        assert [step for step, _ in series] == list(range(1, EPOCHS + 1)), key  # one point per epoch
    # Only rank 0 wrote files: one set of checkpoints, under the run's own id.
    assert [p.name for p in (tmp_path / "out").iterdir()] == [run_id]
    assert not list(tmp_path.glob("**/.*.tmp"))

    one = metric_points(aqtrack.train(**{**SETTINGS, "output_dir": str(tmp_path / "one")}).run_id)
    for key in (TRAIN_LOSS, GRAD_NORM, GRAD_NORM_MAX, LR, "val_loss"):
        rtol = VAL_RTOL if key.startswith("val") else TRAIN_RTOL
        assert [v for _, v in two[key]] == pytest.approx([v for _, v in one[key]], rel=rtol), key
    assert [v for _, v in two[TRAIN_ACC]] == pytest.approx([v for _, v in one[TRAIN_ACC]], abs=1.01 / 67)
    assert [v for _, v in two[VAL_ACC]] == pytest.approx([v for _, v in one[VAL_ACC]], abs=1.01 / 33)


def test_a_run_rank_0_refuses_stops_every_rank_at_once_with_one_line(tmp_path):
    unknown = "0123456789abcdef0123456789abcdef"
    start = time.monotonic()
    refused = torchrun(tmp_path, "train", "--resume", unknown)
    _, err = refused.communicate(timeout=120)

    assert refused.returncode != 0
    assert time.monotonic() - start < 60  # not a collective's 30-minute timeout
    lines = [line for line in err.splitlines() if line.startswith("aqtrack: error:")]
    assert any(line.startswith(f"aqtrack: error: --resume {unknown}: no such run") for line in lines), err
    assert any(
        line.startswith("aqtrack: error: rank 1: rank 0 stopped before training (ResumeError: --resume")
        for line in lines
    ), err
    client = MlflowClient()
    experiment = client.get_experiment_by_name("action-quality")
    assert experiment is None or not client.search_runs([experiment.experiment_id])


def _rank_epoch(rank: int, tiny: dict, port: int, out: Path, low: int | None = None) -> None:
    """One epoch on rank `rank` of 2 (torch.multiprocessing target): its metrics and weights to `out`.
    `low`: on variable-length data, lengths uniform in low..100 (see `_trainer`)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    os.environ["LOCAL_RANK"] = str(rank)
    from aqtrack.training import distributed

    with distributed.joined() as world:
        trainer = _trainer(tiny, world, low)
        trainer.net = distributed.wrap(trainer.model, trainer.device, world)
        trainer.train_batches.set_epoch(1)
        metrics, batch_losses = loop.train_one_epoch(trainer)
        val = loop.evaluate(trainer.model, trainer.val_loader, trainer.device, world).metrics("val")
    weights = trainer.model.state_dict()
    result = {"metrics": metrics, "batch_losses": batch_losses, "val": val, "model": weights}
    torch.save(result, out / f"rank{rank}.pt")


def _trainer(tiny: dict, world: World = SINGLE, low: int | None = None) -> loop.Trainer:
    """`low`: every sequence cut to a length in low..100, NaN after it."""
    cfg = Config.from_dict({**tiny, "n_train": 67, "n_val": 33, "dropout": 0.0})
    data = load_data("synthetic", n_train=67, n_val=33, val_fraction=0.2, seed=0)
    data = data if low is None else variable_length(data, low)
    return loop.build_trainer(cfg, data, torch.device("cpu"), world)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_hold_the_global_grad_norm_and_metrics_of_one_process(tiny, tmp_path):
    torch.multiprocessing.start_processes(
        _rank_epoch, args=(tiny, _free_port(), tmp_path), nprocs=2, start_method="spawn"
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    alone = _trainer(tiny)
    alone.train_batches.set_epoch(1)
    metrics, batch_losses = loop.train_one_epoch(alone)
    val = loop.evaluate(alone.model, alone.val_loader, alone.device).metrics("val")

    # After DDP's all-reduce each rank clips the same global gradient: the same pre-clip norm, bit for bit.
    assert ranks[0]["metrics"] == ranks[1]["metrics"] and ranks[0]["val"] == ranks[1]["val"]
    assert all(torch.equal(ranks[0]["model"][k], ranks[1]["model"][k]) for k in ranks[0]["model"])
    two = ranks[0]
    assert two["metrics"] == pytest.approx(metrics, rel=TRAIN_RTOL)
    assert two["batch_losses"] == pytest.approx(batch_losses, rel=TRAIN_RTOL)
    assert len(batch_losses) == 5  # 67 = 4 x 16 + 3: the short batch is shared 2 + 1, not padded
    assert two["val"] == pytest.approx(val, rel=VAL_RTOL)
    assert two["model"].keys() == alone.model.state_dict().keys()  # no `module.` prefixes
    # Not compared: the convolution biases before each BatchNorm (their gradient is rounding noise,
    # which Adam scales to lr-sized steps; see the module docstring) and the running means trailing them.
    for key, value in alone.model.state_dict().items():
        if not (key.endswith(".0.bias") or key.endswith("running_mean")):
            assert torch.allclose(two["model"][key].double(), value.double(), rtol=1e-4, atol=1e-6), key


def test_ranks_on_variable_length_data_take_batch_statistics_over_the_real_frames_of_both(tiny, tmp_path):
    """Each rank cuts its share of a batch to its own longest sequence; with statistics over the real
    frames of both shares, the epoch is still the one-process epoch."""
    torch.multiprocessing.start_processes(
        _rank_epoch, args=(tiny, _free_port(), tmp_path, 30), nprocs=2, start_method="spawn"
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    alone = _trainer(tiny, low=30)
    alone.train_batches.set_epoch(1)
    lengths = lengths_of(alone.train_loader.dataset.x.numpy())
    assert lengths.min() < 100  # variable length indeed ...
    cut = []
    for rank in (0, 1):
        share = Shards(67, 16, World(rank, 2), seed=alone.config.train.seed)
        share.set_epoch(1)
        cut.append([int(lengths[b].max()) for b in share if b])
    assert cut[0] != cut[1]  # ... and the ranks cut their shares of a batch to different lengths

    metrics, batch_losses = loop.train_one_epoch(alone)
    val = loop.evaluate(alone.model, alone.val_loader, alone.device).metrics("val")

    assert ranks[0]["metrics"] == ranks[1]["metrics"] and ranks[0]["val"] == ranks[1]["val"]
    two = ranks[0]
    assert two["metrics"] == pytest.approx(metrics, rel=TRAIN_RTOL)
    assert two["batch_losses"] == pytest.approx(batch_losses, rel=TRAIN_RTOL)
    assert two["val"] == pytest.approx(val, rel=VAL_RTOL)
    for key, value in alone.model.state_dict().items():  # as in the fixed-length test above
        if not (key.endswith(".0.bias") or key.endswith("running_mean")):
            assert torch.allclose(two["model"][key].double(), value.double(), rtol=1e-4, atol=1e-6), key


def test_global_batches_are_the_same_for_any_number_of_processes():
    alone, pair = Shards(67, 16, seed=3), [Shards(67, 16, World(r, 2), seed=3) for r in (0, 1)]
    for epoch in (1, 2):
        alone.set_epoch(epoch)
        for shard in pair:
            shard.set_epoch(epoch)
        batches = list(alone)
        assert sorted(i for b in batches for i in b) == list(range(67))  # nothing padded or dropped
        assert [len(b) for b in batches] == alone.global_sizes == [16, 16, 16, 16, 3]
        for whole, *parts in zip(batches, *pair, strict=True):
            assert sorted(whole) == sorted(parts[0] + parts[1])
            assert abs(len(parts[0]) - len(parts[1])) <= 1
    alone.set_epoch(1)
    first = list(alone)
    alone.set_epoch(2)
    assert list(alone) != first  # the order changes with the epoch, and is fixed by it
    alone.set_epoch(1)
    assert list(alone) == first


def test_world_comes_from_torchrun_environment():
    assert world_from_env({}) == SINGLE
    assert world_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == World(1, 2, 1)
    with pytest.raises(ConfigError, match="RANK, WORLD_SIZE and LOCAL_RANK must be integers"):
        world_from_env({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ConfigError, match=r"RANK=2 is not in \[0, WORLD_SIZE=2\)"):
        world_from_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_device_auto_is_cuda_when_available_and_cuda_without_it_is_refused(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^--device cuda: no CUDA device is available .* use --device cpu"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto", World(0, 2, 0)) == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="local rank 1 has no GPU of its own"):
        resolve_device("cuda", World(1, 2, 1))


def test_device_cuda_without_cuda_is_one_line_and_creates_no_run(tiny, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    assert cli.main(["train", "--device", "cuda", *flags(tiny)]) == 2

    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith("aqtrack: error: --device cuda: no CUDA device is available")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("action-quality")
    assert experiment is None or not client.search_runs([experiment.experiment_id])


def test_amp_on_cpu_trains_in_full_precision_with_a_warning(caplog):
    with caplog.at_level("WARNING", logger="aqtrack"):
        precision = precision_for("bf16", torch.device("cpu"))
    assert precision.dtype is None and not precision.scaler.is_enabled()
    assert "--amp bf16: mixed precision is used on CUDA only" in caplog.text
    assert precision_for("none", torch.device("cpu")).dtype is None


def test_fp16_grad_norm_is_the_unscaled_pre_clip_norm(tiny, monkeypatch):
    # fp16 autocast and a GradScaler, run on the CPU (the code path `--amp fp16` takes on CUDA).
    trainer = _trainer({**tiny, "max_grad_norm": 1e-3})
    trainer.precision = mixed("fp16", "cpu")
    trainer.precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    reference = _trainer({**tiny, "max_grad_norm": 1e-3})  # the same weights, full precision
    reference.train_batches.set_epoch(1)
    trainer.train_batches.set_epoch(1)
    x, y, lengths = next(iter(reference.train_loader))
    grads = torch.autograd.grad(
        torch.nn.functional.cross_entropy(reference.model.train()(x, lengths), y),
        list(reference.model.parameters()),
    )
    expected = torch.sqrt(sum(g.pow(2).sum() for g in grads)).item()

    norms = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(*args, **kwargs):
        norms.append(float(real_clip(*args, **kwargs)))
        return torch.tensor(norms[-1])

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    metrics, _ = loop.train_one_epoch(trainer)

    assert norms[0] == pytest.approx(expected, rel=2e-2)  # not 1024x: unscaled before clipping
    assert metrics[GRAD_NORM_MAX] < 100 * expected
    state = trainer.snapshot(TrainState(config={}, model_spec={}))
    assert state.scaler["scale"] == 2.0**10 and state.scaler["_growth_tracker"] == len(norms)


def test_gradient_scaler_state_survives_a_checkpoint_and_a_cpu_resume(tiny, tmp_path):
    gpu_like = _trainer(tiny)
    gpu_like.precision = mixed("fp16", "cpu")
    gpu_like.precision.scaler = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=7)
    gpu_like.train_batches.set_epoch(1)
    loop.train_one_epoch(gpu_like)
    spec = gpu_like.spec.to_dict()
    saved = gpu_like.snapshot(TrainState(config=gpu_like.config.to_dict(), model_spec=spec))
    assert saved.scaler["growth_interval"] == 7 and saved.scaler["_growth_tracker"] > 0
    path = save_checkpoint(saved, tmp_path / LAST)
    assert torch.load(path, weights_only=True)["scaler"] == saved.scaler  # plain values

    on_cpu = _trainer(tiny)  # full precision: its scaler is switched off
    loop.restore(on_cpu, load_checkpoint(path))
    resumed = on_cpu.snapshot(load_checkpoint(path))
    assert resumed.scaler == saved.scaler  # kept for the next GPU resume

    back_on_gpu = _trainer(tiny)
    back_on_gpu.precision = mixed("fp16", "cpu")
    loop.restore(back_on_gpu, load_checkpoint(path))
    assert back_on_gpu.precision.scaler.state_dict() == saved.scaler


def test_checkpoint_written_on_cuda_loads_on_cpu_and_restores(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine, even on a GPU one
    trainer = _trainer(tiny)
    state = trainer.snapshot(TrainState(config=trainer.config.to_dict(), model_spec=trainer.spec.to_dict()))
    path = _as_if_saved_on_cuda(save_checkpoint(state, tmp_path / LAST))
    with pytest.raises(RuntimeError, match="CUDA"):  # what a plain load on this machine does
        torch.load(path, weights_only=True)

    loaded = load_checkpoint(path)

    assert all(t.device.type == "cpu" for t in loaded.model.values())
    fresh = _trainer({**tiny, "seed": 7})
    loop.restore(fresh, loaded)
    assert all(torch.equal(fresh.model.state_dict()[k], v) for k, v in trainer.model.state_dict().items())
    assert all(p.device == fresh.device for p in fresh.model.parameters())


def _as_if_saved_on_cuda(path: Path) -> Path:
    """Rewrite a checkpoint so that its tensors say they were saved on cuda:0, as on a GPU machine:
    torch.save records each storage's device as a pickled 'cpu' string (protocol 2, memoised once)."""
    cpu, cuda = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"
    buffer = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/data.pkl"):
                assert data.count(cpu) == 1
                data = data.replace(cpu, cuda)
            dst.writestr(item, data)
    path.write_bytes(buffer.getvalue())
    return path


def test_a_process_without_a_checkpoint_dir_writes_nothing(tiny, tmp_path):
    trainer = _trainer({**tiny, "rounds": 1})
    before = set(tmp_path.rglob("*"))

    loop.fit(trainer, TrainState(config=trainer.config.to_dict(), model_spec={}), NullTracker(), None)

    assert set(tmp_path.rglob("*")) == before
