"""One process trains a run at a time, so two never write into one history.

On one machine an exclusive `flock` per (tracking store, run) decides, race-free; the kernel drops it
when its process dies, even by SIGKILL, so a killed run can be resumed at once. Across machines the
lock cannot reach: there the run's status and heartbeat tag do (see `pipeline._check_not_running`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from aqtrack.errors import ResumeError


def lock_path(tracking_uri: str, run_id: str) -> Path:
    store = hashlib.sha256(tracking_uri.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"aqtrack-{os.getuid()}-locks" / f"{store}-{run_id}.lock"


@contextlib.contextmanager
def run_lock(tracking_uri: str, run_id: str) -> Iterator[None]:
    """Hold the run for the block, or raise ResumeError naming the process that holds it."""
    path = lock_path(tracking_uri, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise ResumeError(
                f"run {run_id} is being trained by another process on this machine (pid {holder}); "
                "wait for it to finish, or stop it and resume again"
            ) from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)
