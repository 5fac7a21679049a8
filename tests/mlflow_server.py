"""A real `mlflow server` on 127.0.0.1 for tests: its own sqlite store (or a given one) and proxied
artifacts in a temp dir, on a free port; started, paused, stopped and restarted by PID (process group)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, root: Path, backend_store_uri: str | None = None) -> None:
        """`backend_store_uri`: serve an existing store (its runs' artifacts where they are) instead of
        a new one in `root`."""
        self.root, self.port = root, free_port()
        self.backend_store_uri = backend_store_uri or f"sqlite:///{root / 'server.db'}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> MlflowServer:
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--backend-store-uri", self.backend_store_uri]
        command += ["--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"]
        with open(self.root / "server.log", "a") as log:
            self.process = subprocess.Popen(
                command, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait_healthy(timeout)
        return self

    def stop(self) -> None:
        """Gone: connections are refused until `start()` again (same port, same store)."""
        if self.process is None:
            return
        self._signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def pause(self) -> None:
        """Hung: connections are accepted (by the kernel) and never answered, until `resume()`."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"mlflow server not healthy after {timeout} s: {self.log()}")

    def log(self) -> str:
        return (self.root / "server.log").read_text()[-2000:]
