"""The training curves: drawn from a run's metric history or a legacy `experiment_report.json`
(`aqtrack plot`, `aqtrack.plot_curves`), and redrawn during training at periodic-checkpoint epochs."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aqtrack import names
from aqtrack.errors import DataError
from aqtrack.names import METRIC_KEYS, REPORT_SERIES
from aqtrack.tracking import store
from aqtrack.training.checkpoint import History, TrainState

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from aqtrack.outputs.plots import Curves

CURVES_REFRESH_S = 60.0  # the least time between two redraws of the curves during training


def plot_curves(source: str | Path) -> Figure:
    """The training-curves figure of a run id, or of an `experiment_report.json` file."""
    from aqtrack.outputs.plots import Curves, training_curves

    text = str(source)
    if store.RUN_ID_RE.match(text) and not Path(text).exists():
        client = store.connect(existing=True)
        store.get_run(client, text, label="plot")
        points = store.fetch_history(client, text, METRIC_KEYS)
        return training_curves(Curves.from_points(points), title=f"run {text}")
    return training_curves(report_curves(Path(text)), title=str(text))


def report_curves(path: Path) -> Curves:
    from aqtrack.outputs.plots import Curves

    try:
        report = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such file; pass a run id or an experiment_report.json") from e
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable JSON report ({type(e).__name__}: {e})") from e
    if not isinstance(report, dict) or "control_losses" not in report:
        raise DataError(f"{path}: not an experiment_report.json (no 'control_losses'); pass a run's report")
    series = {key: report[name] for name, key in REPORT_SERIES.items() if isinstance(report.get(name), list)}
    epochs = report.get("epochs") or list(range(1, len(report["control_losses"]) + 1))
    return Curves.from_lists(series, epochs)


def history_curves(history: History) -> Curves:
    from aqtrack.outputs.plots import Curves

    return Curves.from_lists(history.metrics, range(1, history.epochs + 1))


def curves_refresher(tracker, output_dir: Path, interval: int):
    """An epoch-end hook: at periodic-checkpoint epochs, redraw the training curves into
    `<output_dir>/plots/` and queue them for the run (sent in the epoch's one flush). Drawing takes
    ~0.2 s, so it happens at most once every CURVES_REFRESH_S seconds."""
    drawn = [-math.inf]

    def refresh(state: TrainState) -> None:
        if state.epoch % interval or time.monotonic() - drawn[0] < CURVES_REFRESH_S:
            return
        drawn[0] = time.monotonic()
        from aqtrack.outputs.plots import save_png, training_curves

        figure = training_curves(history_curves(state.history), title=f"run {state.run_id}")
        tracker.log_artifact(save_png(figure, output_dir / names.CURVES_ARTIFACT), names.PLOTS_DIR)

    return refresh
