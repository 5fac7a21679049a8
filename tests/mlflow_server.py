"""A real `mlflow server` on 127.0.0.1 for tests, on a free port, proxying artifacts into a temp dir;
started, paused, stopped and restarted by PID (process group). Its store is a sqlite file of its own or
a throwaway PostgreSQL cluster (`PostgresCluster`); `serve(backend, root)` gives either and tears it
all down afterwards, even when the test failed."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

BACKENDS = ("sqlite", "postgresql")
# MLflow 3's job runner (seven huey consumer processes) is on by default; aqtrack submits no server jobs,
# and without it a server is healthy in about half the time (measured: 8-15 s instead of 20-32 s here).
NO_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
DEBIAN_INITDB = "/usr/lib/postgresql/*/bin/initdb"  # Debian's postgresql-N packages put their tools here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(
        self,
        root: Path,
        backend_store_uri: str | None = None,
        args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`backend_store_uri` defaults to a sqlite file in `root`; `args` and `env` are extra server
        options and environment variables (e.g. `--app-name basic-auth` and its admin password)."""
        self.root, self.port = root, free_port()
        self.backend_store_uri = backend_store_uri or f"sqlite:///{root / 'server.db'}"
        self.args, self.env = args, {**os.environ, **NO_JOBS, **(env or {})}
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = root / "artifacts"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> MlflowServer:
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--backend-store-uri", self.backend_store_uri, "--workers", "1"]
        command += ["--serve-artifacts", "--artifacts-destination", str(self.artifacts), *self.args]
        with open(self.root / "server.log", "a") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.root,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
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


class PostgresMissing(RuntimeError):
    pass


def postgres_bin() -> Path:
    """The newest Debian PostgreSQL's bin directory (/usr/lib/postgresql/N/bin), else initdb's on PATH."""
    found = sorted(glob.glob(DEBIAN_INITDB), key=lambda p: int(Path(p).parts[-3]))
    initdb = found[-1] if found else shutil.which("initdb")
    if initdb is None:
        raise PostgresMissing(
            "PostgreSQL not found (no initdb in /usr/lib/postgresql/*/bin or on PATH): "
            "run `bash scripts/system-deps.sh` to install it"
        )
    return Path(initdb).parent


class PostgresCluster:
    """A throwaway PostgreSQL cluster: `initdb` into a temp dir, `pg_ctl start` on a free port of
    127.0.0.1 (its unix socket in that dir too), one database `mlflow`; `stop()` removes it all.

    PostgreSQL refuses to run as root, so as root the cluster belongs to Debian's `postgres` user and
    every command runs through `runuser`. The temp dir is under the system temp dir (not pytest's
    root-only one), short enough for a unix socket path.
    """

    USER, DATABASE = "aqtrack", "mlflow"

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.as_user: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="aqtrack-pg-"))
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.root)
                raise PostgresMissing(
                    "running as root, and PostgreSQL refuses root: no `postgres` user to run it as; "
                    "run `bash scripts/system-deps.sh` (Debian's postgresql package creates it)"
                ) from None
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data, self.port = self.root / "data", free_port()
        self.uri = f"postgresql+psycopg2://{self.USER}@127.0.0.1:{self.port}/{self.DATABASE}"
        self.started = False

    def start(self) -> PostgresCluster:
        try:
            self._run("initdb", "-D", self.data, "-U", self.USER, "--auth=trust", "--no-sync", "-E", "UTF8")
            # fsync off: a test database is thrown away, never recovered after a crash
            options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            log = self.root / "postgres.log"
            self._run("pg_ctl", "-D", self.data, "-l", log, "-o", options, "-w", "start")
            self.started = True
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.USER, self.DATABASE)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stopped (fast: open connections are closed) and removed."""
        try:
            if self.started:
                self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
                self.started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str | Path) -> None:
        command = [*self.as_user, str(self.bin / program), *map(str, args)]
        done = subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            log = self.root / "postgres.log"
            tail = log.read_text()[-1500:] if log.exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")


@contextlib.contextmanager
def serve(
    backend: str,
    root: Path,
    sqlite_template: Path | None = None,
    args: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[MlflowServer]:
    """A started `mlflow server` whose store is `backend` ("sqlite" or "postgresql"), artifacts proxied
    into `root`; stopped (and its database cluster removed) when the block ends, however it ends.

    `sqlite_template` is an empty, migrated sqlite store to start from: a server migrating a new one
    takes about 6 s longer to be healthy.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: want one of {', '.join(BACKENDS)}")
    with contextlib.ExitStack() as stack:
        uri = None
        if backend == "sqlite" and sqlite_template is not None:
            shutil.copyfile(sqlite_template, root / "server.db")
        if backend == "postgresql":
            cluster = PostgresCluster()
            stack.callback(cluster.stop)
            uri = cluster.start().uri
        server = MlflowServer(root, uri, args, env)
        stack.callback(server.stop)
        yield server.start()
