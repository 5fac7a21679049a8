"""Small hand-written fakes the tests share."""

from __future__ import annotations

from pathlib import Path


class RecordingTracker:
    """A Tracker that records what it is given, in memory: metrics by key and step (each step of a key
    at most once), artifacts as (file name, artifact path), and tags."""

    def __init__(self) -> None:
        self.metrics: dict[str, dict[int, float]] = {}
        self.artifacts: list[tuple[str, str | None]] = []
        self.tags: dict[str, str] = {}

    def log_metrics(self, metrics, step):
        for key, value in metrics.items():
            assert step not in self.metrics.setdefault(key, {}), (key, step)
            self.metrics[key][step] = value

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append((Path(path).name, artifact_path))

    def set_tags(self, tags):
        self.tags.update(tags)

    def flush(self):
        pass
