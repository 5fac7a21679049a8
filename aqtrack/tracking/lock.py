"""One process trains a run at a time, so two never write into one history.

On one machine an exclusive `flock` per (tracking store, run) decides, race-free; the kernel drops it
when its process dies, even by SIGKILL, so a killed run can be resumed at once. Across machines the
lock cannot reach: there the run's status and heartbeat tag do (see `store.held_elsewhere`).

The same kind of lock serialises the first contact with a new embedded sqlite store: MLflow creates
its schema then, and two processes doing it at once can crash one of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from aqtrack.errors import ResumeError


def _locks_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"aqtrack-{os.getuid()}-locks"
    path.mkdir(parents=True, exist_ok=True)
    return path


def lock_path(tracking_uri: str, run_id: str) -> Path:
    store = hashlib.sha256(tracking_uri.encode()).hexdigest()[:12]
    return _locks_dir() / f"{store}-{run_id}.lock"


@contextlib.contextmanager
def _flocked(path: Path, blocking: bool) -> Iterator[IO[str] | None]:
    """The open lock file while we hold its lock; None (non-blocking only) if another process holds it.

    The holder removes the file as it lets go, so lock files do not pile up (one per run). Whoever
    opened the file before that and locks it afterwards holds a lock on a removed file: it sees that
    (the path is gone or is a new file) and tries again."""
    while True:
        f = open(path, "a+")  # noqa: SIM115  (closed below, on every path)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            try:
                yield None
            finally:
                f.close()
            return
        if _is_current(f, path):
            break
        f.close()
    try:
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        yield f
    finally:
        path.unlink(missing_ok=True)  # while still holding the lock: no one is between the two
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _is_current(f: IO[str], path: Path) -> bool:
    try:
        return os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def run_lock(tracking_uri: str, run_id: str) -> Iterator[None]:
    """Hold the run for the block, or raise ResumeError naming the process that holds it."""
    path = lock_path(tracking_uri, run_id)
    with _flocked(path, blocking=False) as held:
        if held is None:
            try:
                holder = path.read_text().strip() or "unknown"
            except FileNotFoundError:  # it let go just now
                holder = "unknown"
            raise ResumeError(
                f"run {run_id} is being trained by another process on this machine (pid {holder}); "
                "wait for it to finish, or stop it and resume again"
            )
        yield


def try_run_lock(stack: contextlib.ExitStack, tracking_uri: str, run_id: str) -> bool:
    """Take the run's lock for the rest of `stack` if no other process holds it; whether we got it."""
    held = stack.enter_context(_flocked(lock_path(tracking_uri, run_id), blocking=False))
    return held is not None


def held_here(tracking_uri: str, run_id: str) -> bool:
    """Whether a process on this machine holds the run's lock now (looks, takes nothing)."""
    path = lock_path(tracking_uri, run_id)
    if not path.exists():
        return False
    with _flocked(path, blocking=False) as held:
        return held is None


@contextlib.contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """Wait for, then hold, the lock of the store's first contact (see the module docstring)."""
    store = hashlib.sha256(tracking_uri.encode()).hexdigest()[:12]
    with _flocked(_locks_dir() / f"store-{store}.lock", blocking=True):
        yield
