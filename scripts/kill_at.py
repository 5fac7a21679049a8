"""Run `aqtrack` and SIGKILL this process at one chosen point, to prove that a resume recovers from it.

    python scripts/kill_at.py POINT:N [--] train --rounds 2 ...
    python scripts/kill_at.py POINT:N [--] cv --folds 3 ...

The process dies at the N-th time (counted from 1) it reaches POINT. SIGKILL gives the process no
chance to clean up, exactly like the OOM killer or a preempted machine. The points, and the function
each one wraps, are a contract with the code: `aqtrack/crash_points.py` (run this script without
arguments to list them).

Used by tests/test_kill_anywhere.py and scripts/soak.py. Exits like the process it wraps otherwise.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import tempfile
from collections import Counter
from pathlib import Path

from aqtrack.crash_points import POINTS

_reached: Counter[str] = Counter()


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _at(point: str, target: tuple[str, int]) -> bool:
    """Count a visit to `point`; True when this is the visit to die at."""
    _reached[point] += 1
    return target == (point, _reached[point])


def _die_before(owner, name: str, point: str, target: tuple[str, int]) -> None:
    """`owner.name` replaced by a wrapper that dies at `point` before calling the original."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if _at(point, target):
            _die()
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def _die_after(owner, name: str, point: str, target: tuple[str, int]) -> None:
    """`owner.name` replaced by a wrapper that calls the original, then dies at `point`."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        if _at(point, target):
            _die()
        return result

    setattr(owner, name, wrapper)


def install(target: tuple[str, int]) -> None:
    """Wrap the functions where the points are; each wrapper dies on the target visit."""
    import torch
    from mlflow import MlflowClient

    from aqtrack.jobs import crossval, cv_aggregate
    from aqtrack.names import BEST, CHECKPOINT_EPOCH_TAG, LAST, MANIFEST_SUFFIX
    from aqtrack.outputs import report
    from aqtrack.training import checkpoint, loop

    clip = torch.nn.utils.clip_grad_norm_

    def clip_grad_norm_(*args, **kwargs):
        if _at("batch", target):
            _die()
        return clip(*args, **kwargs)

    torch.nn.utils.clip_grad_norm_ = clip_grad_norm_

    _die_before(loop, "evaluate", "evaluate", target)

    save = torch.save

    def torch_save(obj, f, *args, **kwargs):
        # checkpoint.torch is the torch module itself: torch.export's in-memory
        # saves come through here too and are neither counted nor torn.
        if isinstance(f, io.BytesIO) or not _at("checkpoint-write", target):
            return save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        f.flush()
        os.fsync(f.fileno())
        _die()

    checkpoint.torch.save = torch_save

    write_checkpoints = loop.write_checkpoints

    def write_checkpoints_(*args, **kwargs):
        paths = write_checkpoints(*args, **kwargs)
        if _at("checkpoint-local", target):
            _die()
        return paths

    loop.write_checkpoints = write_checkpoints_

    log_metric_batch = MlflowClient.log_batch

    def log_batch(self, run_id, metrics=(), params=(), tags=(), *args, **kwargs):
        result = log_metric_batch(self, run_id, metrics, params, tags, *args, **kwargs)
        epoch_tagged = any(t.key == CHECKPOINT_EPOCH_TAG for t in tags)
        if (metrics and _at("logged", target)) or (epoch_tagged and _at("tagged", target)):
            _die()
        return result

    MlflowClient.log_batch = log_batch

    log_artifact = MlflowClient.log_artifact
    truncated = {"action_quality_round": "upload-periodic", BEST: "upload-best", LAST: "upload-last"}

    def log_artifact_(self, run_id, local_path, artifact_path=None):
        name = Path(local_path).name
        point = next((p for prefix, p in truncated.items() if name.startswith(prefix)), None)
        if point and not name.endswith(MANIFEST_SUFFIX) and _at(point, target):
            with tempfile.TemporaryDirectory() as tmp:  # an upload cut off halfway
                half = Path(tmp) / name
                data = Path(local_path).read_bytes()
                half.write_bytes(data[: len(data) // 2])
                log_artifact(self, run_id, str(half), artifact_path)
            _die()
        result = log_artifact(self, run_id, local_path, artifact_path)
        if (name == LAST and _at("uploaded-last", target)) or (
            name == LAST + MANIFEST_SUFFIX and _at("uploaded-manifest", target)
        ):
            _die()
        return result

    MlflowClient.log_artifact = log_artifact_

    _die_before(report, "write_report", "report", target)

    update_run = MlflowClient.update_run

    def update_run_(self, run_id, status=None, name=None):
        result = update_run(self, run_id, status, name)
        if status == "RUNNING" and _at("reopened", target):
            _die()
        return result

    MlflowClient.update_run = update_run_

    log_model_artifacts = MlflowClient.log_model_artifacts

    def log_model_artifacts_(self, *args, **kwargs):
        result = log_model_artifacts(self, *args, **kwargs)
        if _at("model-uploaded", target):
            _die()
        return result

    MlflowClient.log_model_artifacts = log_model_artifacts_

    _die_before(crossval, "_fold_done", "fold-done", target)
    _die_after(cv_aggregate, "log_scores", "cv-aggregated", target)


def parse(spec: str) -> tuple[str, int]:
    point, _, count = spec.partition(":")
    if point not in POINTS or not count.isdigit() or int(count) < 1:
        raise SystemExit(
            f"kill_at.py: {spec!r}: want POINT:N with N >= 1 and POINT one of {', '.join(POINTS)}"
        )
    return point, int(count)


def main() -> int:
    if len(sys.argv) < 3:
        listed = "\n".join(f"  {point:18}{when} ({hook})" for point, (hook, when) in POINTS.items())
        raise SystemExit(f"{__doc__}\npoints:\n{listed}")
    target = parse(sys.argv[1])
    args = [a for a in sys.argv[2:] if a != "--"]
    install(target)
    from aqtrack.cli import main as aqtrack

    return aqtrack(args)


if __name__ == "__main__":
    sys.exit(main())
