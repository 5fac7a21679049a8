"""Crash injection, shared by the tests that kill trainings: `aqtrack` in a process of its own, SIGKILLed
at a chosen point (scripts/kill_at.py), and an epoch-end hook that raises in this process; `flags` turns
settings into the command line of such a process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

KILL_AT = Path(__file__).resolve().parents[1] / "scripts" / "kill_at.py"


def flags(settings: dict) -> list[str]:
    """Settings as the CLI takes them: {"n_train": 64} -> ["--n-train", "64"]."""
    return [part for key, value in settings.items() for part in (f"--{key.replace('_', '-')}", str(value))]


def run_aqtrack(
    cwd: Path, *args: str, kill_at: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python -m aqtrack ARGS` in `cwd`, run to its end, or SIGKILLed at `kill_at` (POINT:N, see
    scripts/kill_at.py; the process then ends with -SIGKILL). It sees this process's environment."""
    prefix = [str(KILL_AT), kill_at, "--"] if kill_at else ["-m", "aqtrack"]
    return subprocess.run(
        [sys.executable, *prefix, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ,
    )


def stop_at(epoch: int, error: BaseException):
    """An epoch-end hook raising `error` at `epoch`, before that epoch is sent: the run has epoch - 1
    published."""

    def hook(state):
        if state.epoch == epoch:
            raise error

    return hook
