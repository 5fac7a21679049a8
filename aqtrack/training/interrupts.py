"""Ctrl-C and SIGTERM stop training between steps, never in the middle of publishing a checkpoint.

While `stop_signals()` is active, SIGINT and SIGTERM raise `Interrupted` (a KeyboardInterrupt, so the
run is marked KILLED) at once, except inside `deferred()`, the block that writes and uploads an epoch's
checkpoint, metrics and tags: there the stop waits until the block is done, so the last complete epoch
is always fully published. A second signal inside the block stops at once: the user insists, and the
manifests still keep a half-published checkpoint from being resumed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    active = False
    depth = 0  # nesting of deferred() blocks
    pending: int | None = None  # a signal that arrived inside one


def _handle(signum: int, frame) -> None:
    if _State.depth and _State.pending is None:
        _State.pending = signum
        log.warning("%s: stopping once this epoch's checkpoint is published", signal.Signals(signum).name)
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Install the handlers for the block (main thread only: elsewhere Python owns the signals)."""
    if threading.current_thread() is not threading.main_thread() or _State.active:
        yield
        return
    previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    _State.active, _State.pending = True, None
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _State.active, _State.depth, _State.pending = False, 0, None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block that a stop signal does not cut short (outside `stop_signals()`, a plain block)."""
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
    if _State.depth == 0 and _State.pending is not None:
        signum, _State.pending = _State.pending, None
        raise Interrupted(signum)


@contextlib.contextmanager
def ignored_signals() -> Iterator[None]:
    """SIGINT and SIGTERM ignored for the block (main thread only), for the processes that follow
    another one which decides when to stop (the torchrun ranks other than 0)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


LAUNCHER_POLL_S = 1.0


@contextlib.contextmanager
def stop_when_gone(launcher, what: str = "the `mlflow run` process") -> Iterator[None]:
    """For the block: once `launcher` (a psutil.Process: the `mlflow run` process that started this
    one, or the `aqtrack cv` process a fold worker serves; None watches nothing) is gone, this process
    gets SIGTERM, so training stops as on any SIGTERM (the last complete epoch published, the run marked
    KILLED, its lock released) instead of training on as an orphan nobody waits for."""
    if launcher is None:
        yield
        return
    done = threading.Event()

    def watch_it() -> None:
        while not done.wait(LAUNCHER_POLL_S):
            if not launcher.is_running():  # also False for a new process that reused its pid
                log.warning("%s (pid %d) is gone: stopping", what, launcher.pid)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=watch_it, name="aqtrack-launcher-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


def launcher_process():
    """The nearest ancestor that is `mlflow run` (between it and us there may be a shell, e.g. conda's
    activation), else the parent process."""
    import psutil

    me = psutil.Process()
    for process in me.parents():
        try:
            words = " ".join(process.cmdline()[:4])
        except psutil.Error:
            continue
        if "mlflow" in words and " run" in words:
            return process
    return me.parent()
