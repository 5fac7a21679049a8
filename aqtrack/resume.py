"""Which checkpoint a resume starts from: the newest one whose bytes match its manifest.

Candidates are the run's `checkpoints/` artifacts and the local copies training wrote to
`<output_dir>/checkpoints/<run_id>/`; those are newer than the artifacts when the tracking server was
unreachable at the end. last.pt is tried first, so the usual resume downloads one checkpoint and one
manifest. If it fails verification (no manifest: the upload never finished; wrong size: truncated;
wrong sha256: corrupted), the periodic and best checkpoints follow, newest epoch first, and the epochs
after the one found are trained again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from aqtrack import tracking
from aqtrack.checkpoint import (
    ARTIFACT_DIR,
    BEST,
    LAST,
    MANIFEST_SUFFIX,
    Manifest,
    TrainState,
    verify_checkpoint,
)
from aqtrack.errors import ResumeError

log = logging.getLogger(__name__)


@dataclass
class Found:
    """A verified checkpoint: its state and the file on local disk."""

    state: TrainState
    path: Path


class _Source:
    """Checkpoint files of one place: the run's artifacts or a local directory."""

    def __init__(self, label: str, names: set[str]) -> None:
        self.label, self.names = label, names

    def checkpoints(self) -> list[str]:
        return sorted(n for n in self.names if n.endswith(".pt"))

    def fetch(self, name: str) -> Path:
        raise NotImplementedError


class _RunArtifacts(_Source):
    def __init__(self, client, run_id: str, tmp: Path) -> None:
        names = tracking.artifact_names(client, run_id, ARTIFACT_DIR)
        super().__init__(f"run {run_id}: {ARTIFACT_DIR}/", names)
        self.client, self.run_id, self.tmp = client, run_id, tmp / run_id

    def fetch(self, name: str) -> Path:
        return tracking.download(self.client, self.run_id, f"{ARTIFACT_DIR}/{name}", self.tmp)


class _LocalCopies(_Source):
    def __init__(self, directory: Path) -> None:
        names = {p.name for p in directory.iterdir() if p.is_file()} if directory.is_dir() else set()
        super().__init__(f"{directory}/", names)
        self.directory = directory

    def fetch(self, name: str) -> Path:
        return self.directory / name


def find_checkpoint(client, run_id: str, local_dir: Path | None, tmp: Path, label: str = "--resume") -> Found:
    """The newest verified checkpoint of the run, or a ResumeError that lists why each one was refused."""
    sources: list[_Source] = [_RunArtifacts(client, run_id, tmp)]
    if local_dir is not None:
        sources.insert(0, _LocalCopies(local_dir))  # first: on an equal epoch, no download needed
    refused: list[str] = []
    tried: set[tuple[str, str]] = set()
    for only_last in (True, False):
        candidates = []
        for source in sources:
            for name in source.checkpoints():
                if (name == LAST) == only_last and (source.label, name) not in tried:
                    tried.add((source.label, name))
                    candidates += _with_manifest(source, name, refused)
        candidates.sort(key=lambda c: -c[2].epoch)  # stable: local before the run's on equal epochs
        for source, name, manifest in candidates:
            where = f"{source.label}{name}"
            try:
                path = source.fetch(name)
                state = verify_checkpoint(path, manifest)
            except ResumeError as e:
                refused.append(f"{where}: {_reason(e, name)}")
                log.warning("%s: refused: %s", where, _reason(e, name))
                continue
            if refused:
                log.warning("resuming from %s (epoch %d) instead", where, state.epoch)
            return Found(state, path)
    if not refused:
        raise ResumeError(
            f"{label} {run_id}: the run has no checkpoint (it stopped before its first epoch ended, or "
            "was not made by aqtrack); start a new run instead"
        )
    raise ResumeError(f"{label} {run_id}: no valid checkpoint ({'; '.join(refused)}); start a new run")


def _with_manifest(source: _Source, name: str, refused: list[str]) -> list[tuple[_Source, str, Manifest]]:
    if name + MANIFEST_SUFFIX not in source.names:
        refused.append(f"{source.label}{name}: no manifest (its upload never finished)")
        return []
    try:
        return [(source, name, Manifest.read(source.fetch(name + MANIFEST_SUFFIX)))]
    except ResumeError as e:
        refused.append(f"{source.label}{name}: {_reason(e, name)}")
        return []


def _reason(e: ResumeError, name: str) -> str:
    """The error without its leading file name (the caller names the place)."""
    text = str(e)
    for prefix in (f"{name}: ", f"{name}{MANIFEST_SUFFIX}: "):
        text = text.removeprefix(prefix)
    return text


def find_best(client, run_id: str, local_dir: Path | None, tmp: Path, label: str) -> Found:
    """The run's best checkpoint, verified against its manifest: the local copy or the run's artifact,
    whichever is newer (the best only improves, so the newer is the better)."""
    sources: list[_Source] = [_RunArtifacts(client, run_id, tmp)]
    if local_dir is not None:
        sources.insert(0, _LocalCopies(local_dir))
    refused: list[str] = []
    candidates = [c for s in sources if BEST in s.names for c in _with_manifest(s, BEST, refused)]
    for source, name, manifest in sorted(candidates, key=lambda c: -c[2].epoch):
        try:
            path = source.fetch(name)
            return Found(verify_checkpoint(path, manifest), path)
        except ResumeError as e:
            refused.append(f"{source.label}{name}: {_reason(e, name)}")
    why = "; ".join(refused) or "the run has none: it stopped before its first epoch ended"
    raise ResumeError(f"{label} {run_id}: no verified best checkpoint ({why})")
