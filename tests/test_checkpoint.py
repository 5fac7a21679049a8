"""aqtrack.training.checkpoint: round trip, atomic writes, safe loading, RNG capture, naming, History."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from aqtrack.config import Config
from aqtrack.errors import ResumeError
from aqtrack.names import BEST, LAST, MANIFEST_SUFFIX
from aqtrack.training.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    MAX_BATCH_LOSSES_PER_EPOCH,
    CheckpointPolicy,
    History,
    Manifest,
    TrainState,
    capture_rng,
    load_checkpoint,
    periodic_name,
    restore_rng,
    save_checkpoint,
    verify_checkpoint,
    write_checkpoints,
)
from aqtrack.training.model import ModelSpec, build_model

_NOISE = np.random.default_rng(0)


def _state() -> TrainState:
    """A realistic state: a small model after one optimizer step, its schedule, RNG and two epochs."""
    torch.manual_seed(0)
    spec = ModelSpec(in_channels=8, num_classes=4, hidden=8, dropout=0.2)
    model = build_model(spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=4)
    model(torch.randn(2, 100, 8)).sum().backward()
    optimizer.step()
    scheduler.step()
    history = History()
    history.append({"train_loss": 1.4, "val_acc": 0.25}, [1.5, 1.4, 1.3])
    history.append({"train_loss": 1.2, "val_acc": 0.5}, [1.25, 1.2])
    return TrainState(
        config=Config.from_dict({"hidden": 8, "epochs_per_round": 4}).to_dict(),
        model_spec=spec.to_dict(),
        epoch=2,
        best_score=0.5,
        best_epoch=2,
        history=history,
        run_id="0123456789abcdef0123456789abcdef",
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        rng=capture_rng(torch.Generator().manual_seed(1)),
    )


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_save_and_load_round_trip_a_train_state(tmp_path: Path) -> None:
    state = _state()
    loaded = load_checkpoint(save_checkpoint(state, tmp_path / LAST))

    assert loaded.model.keys() == state.model.keys()
    for key, tensor in state.model.items():
        assert torch.equal(loaded.model[key], tensor), key
    assert loaded.history == state.history
    assert (loaded.epoch, loaded.best_score, loaded.best_val_acc, loaded.best_epoch) == (2, 0.5, 0.5, 2)
    assert loaded.round == 1
    assert loaded.run_id == state.run_id
    assert loaded.config == state.config
    assert loaded.model_spec == state.model_spec
    assert loaded.scheduler == state.scheduler
    assert loaded.optimizer["param_groups"] == state.optimizer["param_groups"]
    assert set(loaded.rng) >= {"python", "numpy", "torch", "data"}
    assert torch.equal(loaded.rng["data"], state.rng["data"])


def test_checkpoint_loads_with_plain_weights_only_torch_load(tmp_path: Path) -> None:
    path = save_checkpoint(_state(), tmp_path / LAST)
    d = torch.load(path, weights_only=True)  # no allow-lists: tensors and plain Python types only
    assert d["format"] == FORMAT
    assert d["format_version"] == FORMAT_VERSION
    assert d["epoch"] == 2


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    save_checkpoint(_state(), tmp_path / "ckpt" / LAST)
    assert _files(tmp_path / "ckpt") == [LAST]


def test_save_replaces_an_existing_file_whole(tmp_path: Path) -> None:
    state = _state()
    reference = save_checkpoint(state, tmp_path / "reference.pt")
    path = tmp_path / "ckpt" / LAST
    path.parent.mkdir()
    path.write_bytes(b"x" * (reference.stat().st_size * 3))  # larger than what replaces it
    old_inode = path.stat().st_ino

    save_checkpoint(state, path)

    assert path.stat().st_ino != old_inode  # renamed over, not rewritten in place
    assert path.read_bytes() == reference.read_bytes()
    assert _files(path.parent) == [LAST]


def test_failed_save_keeps_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    path = save_checkpoint(_state(), tmp_path / "ckpt" / LAST)
    before = path.read_bytes()
    broken = _state()
    broken.config = {"not_serialisable": lambda: None}

    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises, the old file must survive
        save_checkpoint(broken, path)

    assert path.read_bytes() == before
    assert _files(path.parent) == [LAST]


def test_truncated_checkpoint_raises_one_line_resume_error(tmp_path: Path) -> None:
    path = save_checkpoint(_state(), tmp_path / LAST)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ResumeError, match=r"last\.pt") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "content",
    [b"", _NOISE.bytes(4096), b"PK\x03\x04" + _NOISE.bytes(200)],
    ids=["empty", "noise", "zip_header_then_noise"],
)
def test_random_bytes_raise_one_line_resume_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / LAST
    path.write_bytes(content)
    with pytest.raises(ResumeError, match=r"last\.pt") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("obj", [{"model": {}, "epoch": 3}, torch.zeros(3), [1, 2]])
def test_valid_torch_file_without_format_marker_is_refused(tmp_path: Path, obj: object) -> None:
    path = tmp_path / LAST
    torch.save(obj, path)
    with pytest.raises(ResumeError, match="format marker"):
        load_checkpoint(path)


def test_checkpoint_missing_a_part_is_refused_naming_it(tmp_path: Path) -> None:
    d = _state().to_dict()
    del d["history"]
    path = tmp_path / LAST
    torch.save(d, path)
    with pytest.raises(ResumeError, match="missing history"):
        load_checkpoint(path)


def test_wrong_format_version_is_refused_naming_the_version(tmp_path: Path) -> None:
    d = _state().to_dict()
    d["format_version"] = 99
    path = tmp_path / LAST
    torch.save(d, path)
    with pytest.raises(ResumeError, match="version 99"):
        load_checkpoint(path)


class _TouchMarker:
    """Unpickling this creates `marker`: what a malicious checkpoint on a shared server could do."""

    def __init__(self, marker: Path, via_shell: bool) -> None:
        self.marker, self.via_shell = marker, via_shell

    def __reduce__(self):
        if self.via_shell:
            return (os.system, (f"touch '{self.marker}'",))
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("via_shell", [False, True], ids=["path_touch", "os_system"])
@pytest.mark.parametrize("force_no_weights_only", [False, True], ids=["default_env", "force_env"])
def test_malicious_pickle_is_refused_and_never_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, via_shell: bool, force_no_weights_only: bool
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / LAST
    payload = _state().to_dict()
    payload["config"] = {"hidden": _TouchMarker(marker, via_shell)}
    torch.save(payload, path)
    assert not marker.exists()
    if force_no_weights_only:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

    with pytest.raises(ResumeError, match=r"last\.pt: refused to load") as info:
        load_checkpoint(path)

    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
    assert not marker.exists()
    # The payload is live: an unsafe load does run it, so the refusal above is what protected us.
    torch.load(path, weights_only=False)
    assert marker.exists()


def _draws(generator: torch.Generator) -> tuple:
    return (
        random.random(),
        np.random.rand(),
        np.random.randn(),  # after an odd number of randn calls NumPy has a cached Gaussian
        torch.rand(3),
        torch.randperm(10, generator=generator),
    )


def _assert_same_draws(a: tuple, b: tuple) -> None:
    assert a[:3] == b[:3]
    assert torch.equal(a[3], b[3])
    assert torch.equal(a[4], b[4])


def test_restore_rng_reproduces_the_draws_after_capture() -> None:
    generator = torch.Generator().manual_seed(7)
    np.random.randn()  # leave a cached Gaussian in NumPy's legacy state
    state = capture_rng(generator)
    expected = _draws(generator)
    _draws(generator)  # move every generator on

    restore_rng(state, generator)

    _assert_same_draws(_draws(generator), expected)


def test_rng_state_survives_a_checkpoint_file(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(7)
    np.random.randn()
    state = _state()
    state.rng = capture_rng(generator)
    expected = _draws(generator)
    loaded = load_checkpoint(save_checkpoint(state, tmp_path / LAST))

    fresh = torch.Generator().manual_seed(123)
    restore_rng(loaded.rng, fresh)

    _assert_same_draws(_draws(fresh), expected)


def test_policy_names_last_every_epoch_best_on_improvement_periodic_every_interval() -> None:
    policy = CheckpointPolicy(interval=3, epochs_per_round=4)
    names = {epoch: policy.names(epoch, improved=False) for epoch in range(1, 9)}
    assert names == {
        1: [LAST],
        2: [LAST],
        3: ["action_quality_round_1_epoch_3.pt", LAST],
        4: [LAST],
        5: [LAST],
        6: ["action_quality_round_2_epoch_2.pt", LAST],
        7: [LAST],
        8: [LAST],
    }
    assert policy.names(3, improved=True) == ["action_quality_round_1_epoch_3.pt", BEST, LAST]
    assert policy.names(5, improved=True) == [BEST, LAST]


def test_policy_periodic_name_at_a_round_end_uses_the_epoch_within_the_round() -> None:
    policy = CheckpointPolicy(interval=4, epochs_per_round=4)
    assert policy.names(4, improved=False)[0] == periodic_name(1, 4)
    assert policy.names(8, improved=False)[0] == "action_quality_round_2_epoch_4.pt"


def test_write_checkpoints_publishes_each_file_then_its_manifest_with_last_pt_last(tmp_path: Path) -> None:
    names = CheckpointPolicy(interval=3, epochs_per_round=4).names(3, improved=True)
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (directory / LAST).write_bytes(b"an older last.pt")

    paths = write_checkpoints(_state(), directory, names)

    assert [p.name for p in paths] == [n for name in names for n in (name, name + MANIFEST_SUFFIX)]
    assert paths[-2].name == LAST
    assert len({p.read_bytes() for p in paths[::2]}) == 1  # one serialisation, published under each name
    assert _files(directory) == sorted(p.name for p in paths)  # no temporary files left behind
    for checkpoint, manifest in zip(paths[::2], paths[1::2], strict=True):
        m = Manifest.read(manifest)
        assert (m.file, m.epoch, m.size) == (checkpoint.name, 2, checkpoint.stat().st_size)
        assert m.sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
        assert verify_checkpoint(checkpoint, m).epoch == 2


def _published(tmp_path: Path) -> tuple[Path, Manifest]:
    path, manifest = write_checkpoints(_state(), tmp_path, [LAST])
    return path, Manifest.read(manifest)


def test_verify_refuses_a_truncated_checkpoint_by_its_size(tmp_path: Path) -> None:
    path, manifest = _published(tmp_path)
    path.write_bytes(path.read_bytes()[: manifest.size // 2])
    with pytest.raises(ResumeError, match=r"last.pt: \d+ bytes, its manifest says \d+ \(truncated"):
        verify_checkpoint(path, manifest)


def test_a_flipped_byte_loads_silently_with_torch_but_verify_refuses_it(tmp_path: Path) -> None:
    path, manifest = _published(tmp_path)
    data = bytearray(path.read_bytes())
    offset = data.index(b"/data/0") + 200  # past the zip entry's header: inside the first tensor's bytes
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))

    assert load_checkpoint(path).epoch == 2  # torch does not check the zip's CRCs
    with pytest.raises(ResumeError, match="sha256 does not match its manifest"):
        verify_checkpoint(path, manifest)


def test_verify_refuses_a_manifest_of_another_epoch(tmp_path: Path) -> None:
    path, manifest = _published(tmp_path)
    with pytest.raises(ResumeError, match="holds epoch 2, its manifest says 5"):
        verify_checkpoint(path, dataclasses.replace(manifest, epoch=5))


@pytest.mark.parametrize("body", ["", "{", '{"format": "other"}', "[1]"])
def test_unreadable_manifest_is_refused_naming_it(tmp_path: Path, body: str) -> None:
    path = tmp_path / (LAST + MANIFEST_SUFFIX)
    path.write_text(body)
    with pytest.raises(ResumeError, match=r"last.pt.manifest.json: unreadable manifest"):
        Manifest.read(path)


def test_history_samples_batch_losses_evenly_keeping_first_and_last() -> None:
    history = History()
    losses = [float(i) for i in range(250)]
    history.append({"train_loss": 1.0}, losses)
    history.append({"train_loss": 0.5}, [7.0, 8.0])

    kept = history.batch_losses[0]
    assert len(kept) == MAX_BATCH_LOSSES_PER_EPOCH == 100
    assert kept[0] == 0.0 and kept[-1] == 249.0
    steps = np.diff(kept)
    assert steps.min() >= 2 and steps.max() <= 3  # 249 / 99 ~ 2.5: evenly spread, no gaps or repeats
    assert history.batch_losses[1] == [7.0, 8.0]
    assert history.total_batches == 252
    assert history.epochs == 2
    assert history.metrics == {"train_loss": [1.0, 0.5]}


def test_history_keeps_exactly_100_losses_unchanged() -> None:
    history = History()
    losses = [float(i) for i in range(100)]
    history.append({}, losses)
    assert history.batch_losses == [losses]
    assert history.total_batches == 100


def test_history_is_stored_as_tensors_and_round_trips(tmp_path: Path) -> None:
    state = _state()
    raw = torch.load(save_checkpoint(state, tmp_path / LAST), weights_only=True)["history"]
    assert raw["batch_losses"].dtype == torch.float64 and raw["batch_losses"].tolist() == [
        1.5,
        1.4,
        1.3,
        1.25,
        1.2,
    ]
    assert raw["batch_losses_per_epoch"].tolist() == [3, 2]
    assert load_checkpoint(tmp_path / LAST).history == state.history


def test_checkpoint_with_a_malformed_history_is_refused_in_one_line(tmp_path: Path) -> None:
    payload = _state().to_dict()
    payload["history"] = {"metrics": {"val_acc": [0.5]}, "batch_losses": [[1.0]], "total_batches": 1}
    torch.save(payload, tmp_path / LAST)
    with pytest.raises(ResumeError, match=r"last.pt: malformed training history \(AttributeError"):
        load_checkpoint(tmp_path / LAST)


def converted_afresh(history: History) -> dict:
    """History.to_dict as it was before it converted incrementally: every list, every time."""
    return {
        "metrics": {k: torch.tensor(v, dtype=torch.float64) for k, v in history.metrics.items()},
        "batch_losses": torch.tensor([x for e in history.batch_losses for x in e], dtype=torch.float64),
        "batch_losses_per_epoch": torch.tensor([len(e) for e in history.batch_losses], dtype=torch.int64),
        "total_batches": history.total_batches,
    }


def assert_same_history_dict(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() and got["metrics"].keys() == want["metrics"].keys()
    for key in want["metrics"]:
        assert torch.equal(got["metrics"][key].nan_to_num(-1), want["metrics"][key].nan_to_num(-1)), key
        assert got["metrics"][key].dtype == torch.float64
    for key in ("batch_losses", "batch_losses_per_epoch"):
        assert torch.equal(got[key], want[key]) and got[key].dtype == want[key].dtype, key
    assert got["total_batches"] == want["total_batches"]


def test_history_to_dict_converts_only_new_epochs_and_equals_a_fresh_conversion_every_time() -> None:
    rng = random.Random(0)
    history, handed_out = History(), []
    for epoch in range(1, 300):
        metrics = {"train_loss": rng.random(), "val_acc": rng.random()}
        if epoch >= 150:
            metrics["val_f1_macro"] = rng.random()  # a key that appears late: NaN before it
        history.append(metrics, [rng.random() for _ in range(rng.randint(1, 130))])  # <= 100 kept
        got, want = history.to_dict(), converted_afresh(history)
        assert_same_history_dict(got, want)
        handed_out.append((got, want))
    # What was handed out is the caller's: later epochs never change it, and it holds no spare storage
    # (torch.save writes a tensor's whole storage).
    for got, want in handed_out:
        assert_same_history_dict(got, want)
    assert all(t.untyped_storage().nbytes() == 8 * len(t) for t in got["metrics"].values())
    assert got["batch_losses"].untyped_storage().nbytes() == 8 * len(got["batch_losses"])


def test_history_to_dict_starts_over_when_its_lists_are_replaced_not_appended_to() -> None:
    history = History()
    for epoch in range(10):
        history.append({"val_acc": epoch / 10}, [float(epoch)] * 3)
    before, want = history.to_dict(), converted_afresh(history)
    history.metrics["val_acc"] = history.metrics["val_acc"][:4]  # another list (a fork keeps epochs 1-4)
    history.batch_losses = history.batch_losses[:4]
    assert_same_history_dict(history.to_dict(), converted_afresh(history))
    history.batch_losses.append([9.0])  # and it grows from there
    history.metrics["val_acc"].append(0.9)
    assert_same_history_dict(history.to_dict(), converted_afresh(history))
    assert_same_history_dict(before, want)  # what was handed out before is untouched
