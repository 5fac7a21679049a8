"""Which checkpoint a run continues from: the newest one whose bytes match its manifest.

Candidates are the run's `checkpoints/` artifacts and the local copies training wrote to
`<output_dir>/<run_id>/checkpoints/`; those are newer than the artifacts when the process died before
uploading an epoch, or the tracking server was unreachable at the end. last.pt is tried first, so the
usual resume downloads one checkpoint and one manifest. If it fails verification (no manifest: the
upload never finished; wrong size: truncated; wrong sha256: corrupted), the periodic and best
checkpoints follow, newest epoch first, and the epochs after the one found are trained again.

A fork starts from the checkpoint of one chosen epoch instead (`find_at_epoch`), and a resume first
publishes the local copies the run's artifacts lack (`unpublished`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from aqtrack.errors import NoCheckpoint, ResumeError
from aqtrack.names import ARTIFACT_DIR, BEST, LAST, MANIFEST_SUFFIX
from aqtrack.tracking import store
from aqtrack.training.checkpoint import Manifest, TrainState, manifest_path, verify_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Found:
    """A verified checkpoint: its state and the file on local disk."""

    state: TrainState
    path: Path


class _Source:
    """Checkpoint files of one place: the run's artifacts or a local directory."""

    local = False

    def __init__(self, label: str, names: set[str]) -> None:
        self.label, self.names = label, names

    def checkpoints(self) -> list[str]:
        return sorted(n for n in self.names if n.endswith(".pt"))

    def fetch(self, name: str) -> Path:
        raise NotImplementedError


class _RunArtifacts(_Source):
    def __init__(self, client, run_id: str, tmp: Path) -> None:
        names = store.artifact_names(client, run_id, ARTIFACT_DIR)
        super().__init__(f"run {run_id}: {ARTIFACT_DIR}/", names)
        self.client, self.run_id, self.tmp = client, run_id, tmp / run_id

    def fetch(self, name: str) -> Path:
        return store.download_or_refuse(self.client, self.run_id, f"{ARTIFACT_DIR}/{name}", self.tmp)


class _LocalCopies(_Source):
    local = True

    def __init__(self, directory: Path) -> None:
        names = {p.name for p in directory.iterdir() if p.is_file()} if directory.is_dir() else set()
        super().__init__(f"{directory}/", names)
        self.directory = directory

    def fetch(self, name: str) -> Path:
        return self.directory / name


def _sources(client, run_id: str, local_dirs: list[Path], tmp: Path) -> list[_Source]:
    # Local copies first: on an equal epoch, no download is needed.
    return [*(_LocalCopies(d) for d in local_dirs), _RunArtifacts(client, run_id, tmp)]


def find_checkpoint(client, run_id: str, local_dirs: list[Path], tmp: Path, label: str = "--resume") -> Found:
    """The newest verified checkpoint of the run, or a ResumeError that lists why each one was refused."""
    sources = _sources(client, run_id, local_dirs, tmp)
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
        found = _first_verified(candidates, refused)
        if found is not None:
            return found
    if not refused:
        raise NoCheckpoint(
            f"{label} {run_id}: the run has no checkpoint (it stopped before its first epoch ended, or "
            "was not made by aqtrack); start a new run instead"
        )
    raise NoCheckpoint(f"{label} {run_id}: no valid checkpoint ({'; '.join(refused)}); start a new run")


def _first_verified(candidates: list[tuple[_Source, str, Manifest]], refused: list[str]) -> Found | None:
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
    return None


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
    sources = _sources(client, run_id, [local_dir] if local_dir else [], tmp)
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


def find_at_epoch(client, run_id: str, local_dirs: list[Path], tmp: Path, epoch: int | None) -> Found:
    """The run's verified checkpoint (periodic, best or last) of global epoch `epoch`, for a fork; a
    ResumeError listing the epochs it has checkpoints of when there is none (or `epoch` is None)."""
    refused: list[str] = []
    candidates = [
        c
        for source in _sources(client, run_id, local_dirs, tmp)
        for name in source.checkpoints()
        for c in _with_manifest(source, name, refused)
    ]
    found = _first_verified([c for c in candidates if c[2].epoch == epoch], refused)
    if found is not None:
        return found
    kinds: dict[int, set[str]] = {}
    for _, name, manifest in candidates:
        kinds.setdefault(manifest.epoch, set()).add({LAST: "last", BEST: "best"}.get(name, "periodic"))
    available = ", ".join(f"{e} ({'/'.join(sorted(k))})" for e, k in sorted(kinds.items())) or "none"
    asked = "pass --fork-epoch N" if epoch is None else f"--fork-epoch {epoch}: no verified checkpoint there"
    why = f"; refused: {'; '.join(refused)}" if refused and epoch is not None else ""
    raise ResumeError(f"--fork {run_id}: {asked}; checkpoints at epochs: {available}{why}")


def unpublished(client, run_id: str, local_dir: Path, tmp: Path) -> list[tuple[Path, Manifest]]:
    """Local checkpoint files of the run, verified against their manifests, that its artifacts lack or
    hold an older epoch of: what a process wrote before it died or lost its tracking server. In
    publishing order: each file before its manifest, last.pt last."""
    local = _LocalCopies(local_dir)
    remote = _RunArtifacts(client, run_id, tmp)
    out = []
    for name in sorted(local.checkpoints(), key=lambda n: n == LAST):
        mine = _with_manifest(local, name, [])
        if not mine:
            continue
        manifest = mine[0][2]
        theirs = _with_manifest(remote, name, []) if name in remote.names else []
        if theirs and theirs[0][2].epoch >= manifest.epoch:
            continue
        try:
            verify_checkpoint(local.fetch(name), manifest)
        except ResumeError as e:
            log.warning("%s%s: not published: %s", local.label, name, _reason(e, name))
            continue
        out.append((local.fetch(name), manifest))
    return out


def files_of(found: list[tuple[Path, Manifest]]) -> list[Path]:
    """Each checkpoint file followed by its manifest file."""
    return [p for path, _ in found for p in (path, manifest_path(path))]
