"""Progress output: a tqdm bar per round on a terminal, key=value lines without one, nothing with --quiet."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

from aqtrack.config import TrainConfig
from aqtrack.outputs.progress import Progress
from aqtrack.training.checkpoint import TrainState

TINY_FLAGS = [
    "--n-train", "64", "--n-val", "32", "--hidden", "8", "--rounds", "2", "--epochs-per-round", "2",
    "--batch-size", "16", "--checkpoint-interval", "2", "--no-svm",
]  # fmt: skip
EPOCH_LINE = re.compile(
    r"^epoch=(\d+)/4 round=(\d)/2 round_epoch=(\d)/2 train_loss=\d\.\d{4} train_acc=\d\.\d{4} "
    r"val_loss=\d\.\d{4} val_acc=\d\.\d{4} val_balanced_acc=\d\.\d{4} val_f1_macro=\d\.\d{4} "
    r"lr=\d\.\d{3}e-\d\d grad_norm=\d+\.\d{4}$",
    re.MULTILINE,
)
BAR = re.compile(
    r"Round (\d)/2: +\d+%\|[^|]*\| (\d)/2 \[[^,\]]*, train_loss=\d\.\d{4} val_loss=[^\r]*grad_norm="
)
SUMMARY = re.compile(r"run [0-9a-f]{32}: 4 epochs, best val_acc")


def _train(args: list[str], tmp_path: Path, *, tty: bool) -> str:
    """Run `aqtrack train` in a subprocess; stdout and stderr together, through a terminal if `tty`."""
    command = [sys.executable, "-m", "aqtrack", "train", *TINY_FLAGS, *args]
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if not tty:
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))  # rows, columns
    with subprocess.Popen(command, cwd=tmp_path, env=env, stdout=follower, stderr=follower) as process:
        os.close(follower)
        out = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        assert process.wait(timeout=120) == 0, out.decode(errors="replace")
    os.close(leader)
    return out.decode(errors="replace")


def test_on_a_terminal_each_round_has_a_tqdm_bar_with_the_latest_metrics(tmp_path):
    out = _train([], tmp_path, tty=True)
    assert {m.groups() for m in BAR.finditer(out)} >= {("1", "2"), ("2", "2")}  # both rounds, completed
    assert not EPOCH_LINE.search(out.replace("\r", "\n"))  # the bar replaces the per-epoch lines
    assert SUMMARY.search(out)


def test_without_a_terminal_each_epoch_is_one_key_value_line(tmp_path):
    out = _train([], tmp_path, tty=False)
    epochs = [(int(e), int(r), int(i)) for e, r, i in EPOCH_LINE.findall(out)]
    assert epochs == [(1, 1, 1), (2, 1, 2), (3, 2, 1), (4, 2, 2)]
    assert "\r" not in out and "Round 1/2" not in out
    assert SUMMARY.search(out)


def test_quiet_shows_neither_bar_nor_lines_only_the_summary(tmp_path):
    for tty in (True, False):
        out = _train(["--quiet"], tmp_path, tty=tty)
        assert not EPOCH_LINE.search(out) and "Round 1/2" not in out
        assert SUMMARY.search(out)
        assert out.strip().splitlines()[-1].startswith("run ")


def test_a_resumed_runs_bar_starts_where_the_run_stopped(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    stream = io.StringIO()
    train = TrainConfig(rounds=2, epochs_per_round=4)
    state = TrainState(config={}, model_spec={}, epoch=5)
    metrics = {"train_loss": 0.5, "train_acc": 0.75, "val_loss": 0.6, "val_acc": 0.7, "lr": 1e-3}
    state.history.metrics = {k: [v] * 6 for k, v in {**metrics, "grad_norm": 0.25}.items()}
    sys_stderr, sys.stderr = sys.stderr, stream
    try:
        with Progress(train, done=5, how="bar") as progress:
            assert "Round 2/4" not in stream.getvalue()
            assert re.search(r"Round 2/2: +25%\|[^|]*\| 1/4", stream.getvalue())
            state.epoch = 6
            progress(state)
            shown = r"Round 2/2: +50%\|[^|]*\| 2/4 .*val_acc=0\.7000 lr=1\.000e-03 grad_norm=0\.2500"
            assert re.search(shown, stream.getvalue())
    finally:
        sys.stderr = sys_stderr
