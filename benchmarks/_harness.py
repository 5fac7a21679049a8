"""What the benchmark scripts share: a scratch directory, a local `mlflow server`, alternating pairs, timers.

Not a benchmark itself (tests/test_benchmarks.py runs `benchmarks/[!_]*.py`). The scripts import it as
`_harness`: `python benchmarks/x.py` puts `benchmarks/` first on sys.path.

Absolute times drift by tens of percent on a shared machine, so every script compares variants that run
alternately in one process (A B, then B A, ...) and reports the median of the per-pair ratios.

Every script ends its output with one `RESULT name=value ...` line (`result`), which `run_all.py` reads
back (`parse_result`): the one place that format is written and read.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

# `--lean`: a run without the SVM and the model export (`--no-svm --no-log-model`); the rest of the
# finishing stage (test split, figures) stays.
LEAN = {"svm": False, "log_model": False}


def parser(doc: str | None, threads: bool = True) -> argparse.ArgumentParser:
    """An argument parser whose help is the script's docstring, with the common flags."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="a tiny smoke run of a few seconds (numbers meaningless)"
    )
    if threads:
        p.add_argument(
            "--threads",
            type=int,
            default=1,
            help="torch intra-op threads (default 1: on a shared 2-core machine, 2 OpenMP threads stall "
            "10-50x whenever another process runs; 0 = torch's default)",
        )
    return p


def set_threads(n: int) -> None:
    """Pin torch's intra-op threads (and OMP_NUM_THREADS for child processes); 0 keeps the defaults."""
    import torch

    if n > 0:
        torch.set_num_threads(n)
        os.environ["OMP_NUM_THREADS"] = str(n)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s)", flush=True)


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temp dir that is the cwd and holds the sqlite store (MLFLOW_TRACKING_URI) while the block runs."""
    old_cwd, old_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    with tempfile.TemporaryDirectory(prefix=f"aqtrack-bench-{prefix}-") as tmp:
        root = Path(tmp)
        os.chdir(root)  # MLflow resolves a sqlite store's default artifact root against the cwd
        os.environ["MLFLOW_TRACKING_URI"] = sqlite_uri(root)
        logging.getLogger("aqtrack").setLevel(logging.WARNING)  # no epoch lines between the figures
        try:
            yield root
        finally:
            os.chdir(old_cwd)
            if old_uri is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = old_uri


def sqlite_uri(directory: Path) -> str:
    return f"sqlite:///{directory / 'mlflow.db'}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(root: Path, timeout: float = 120.0) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with its own sqlite store and proxied artifacts under `root`.

    Its job runner (MLflow 3's background job consumers, seven processes) is switched off: aqtrack uses
    no server jobs, and on a 2-core machine they only add noise. Started in its own process group and
    stopped by that group's id (the server's PID), never by name.
    """
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", sqlite_uri(root), "--workers", "1"]
    command += ["--serve-artifacts", "--artifacts-destination", str(root / "artifacts")]
    log_path = root / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            command,
            cwd=root,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # the job runner, off
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, server, log_path, timeout)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"mlflow server not healthy after {timeout} s: {log.read_text()[-2000:]}")


def alternate(variants: Mapping[str, Callable[[], float]], pairs: int) -> list[dict[str, float]]:
    """Run every variant once per pair, in forward order on even pairs and reversed on odd ones.

    Each variant returns the seconds it measured. Prints one line per pair; returns one dict per pair.
    """
    names = list(variants)
    rows = []
    for i in range(pairs):
        order = names if i % 2 == 0 else names[::-1]
        row = {name: variants[name]() for name in order}
        rows.append({name: row[name] for name in names})
        print(f"pair {i + 1}: " + ", ".join(f"{k} {v:.3f}s" for k, v in rows[-1].items()), flush=True)
    return rows


def median_ratio(rows: list[dict[str, float]], a: str, b: str) -> float:
    """Median over pairs of a / b (both measured in the same pair)."""
    return statistics.median(r[a] / r[b] for r in rows)


def ratio_range(rows: list[dict[str, float]], a: str, b: str) -> str:
    ratios = sorted(r[a] / r[b] for r in rows)
    return f"{ratios[0]:.3f}..{ratios[-1]:.3f}"


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


RESULT_NAME = re.compile(r"[a-z][a-z0-9_]*")


def result(**values: float) -> None:
    """Print the script's last line, `RESULT name=value ...`: its ratios (names `a_over_b`) and any
    figures worth keeping, named with their unit (`epoch_ms_null`, `help_s`). Floats get 3 decimals."""
    bad = [name for name in values if not RESULT_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"RESULT names must be lowercase identifiers: {bad}")
    fields = (f"{name}={v}" if isinstance(v, int) else f"{name}={v:.3f}" for name, v in values.items())
    print("RESULT " + " ".join(fields), flush=True)


def parse_result(line: str) -> dict[str, float] | None:
    """{name: value} from a `RESULT name=value ...` line, or None when the line is not one."""
    words = line.split()
    if len(words) < 2 or words[0] != "RESULT":
        return None
    values = {}
    for word in words[1:]:
        name, sep, value = word.partition("=")
        if not sep or not RESULT_NAME.fullmatch(name) or name in values:
            return None
        try:
            values[name] = float(value)
        except ValueError:
            return None
    return values


class Spent:
    """Seconds accumulated per key, from `wrap`ped callables or `add`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def add(self, key: str, seconds: float) -> None:
        self.seconds[key] += seconds
        self.calls[key] += 1

    def wrap(self, key: str | Callable[..., str], fn: Callable) -> Callable:
        """`fn`, timed under `key` (or under `key(*args, **kwargs)` when key is a function)."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(key(*args, **kwargs) if callable(key) else key, time.perf_counter() - start)

        return timed

    def total(self, prefix: str = "") -> float:
        return sum(v for k, v in self.seconds.items() if k.startswith(prefix))

    def clear(self) -> None:
        self.seconds.clear()
        self.calls.clear()


class TimedClient:
    """An MlflowClient whose every method call is timed into `spent` as `mlflow.<method>(<what>)`.

    log_batch is split by what it carries (metrics / tags / params) and log_artifact by the file logged,
    so a breakdown shows which call costs what.
    """

    def __init__(self, client: Any, spent: Spent) -> None:
        self._client, self.spent = client, spent  # `spent` may be switched between calls

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return self.spent.wrap(lambda *a, **kw: f"mlflow.{name}({_what(name, a, kw)})", attr)


def _what(method: str, args: tuple, kwargs: dict) -> str:
    if method == "log_batch":
        return "+".join(k for k in ("metrics", "params", "tags") if kwargs.get(k))
    if method == "log_artifact":
        name = Path(args[1] if len(args) > 1 else kwargs["local_path"]).name
        return "periodic checkpoint" if name.startswith("action_quality_round_") else name
    return ""


def breakdown(spent: Spent, per: float, unit: str, prefix: str = "") -> list[str]:
    """Lines `key: X ms per <unit> (N calls)` for the keys under `prefix`, largest first."""
    items = sorted(((k, v) for k, v in spent.seconds.items() if k.startswith(prefix)), key=lambda kv: -kv[1])
    return [f"  {k:<52} {v / per * 1000:8.2f} ms per {unit}  ({spent.calls[k]} calls)" for k, v in items]
