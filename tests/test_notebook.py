"""examples/train.ipynb runs top to bottom in a real Jupyter kernel (nbclient), on a tiny config."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from mlflow import MlflowClient
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "train.ipynb"
EXPERIMENT = "notebook-test"


def _with_parameters(nb: nbformat.NotebookNode, settings: str) -> nbformat.NotebookNode:
    """Papermill's convention: a cell right after the one tagged `parameters` overrides it."""
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(
        index + 1, nbformat.v4.new_code_cell(settings, metadata={"tags": ["injected-parameters"]})
    )
    return nb


def _text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def _has_image(cell: nbformat.NotebookNode) -> bool:
    return any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[nbformat.NotebookNode, str]:
    """The notebook executed once against this module's own store (tests below read its outputs)."""
    work = tmp_path_factory.mktemp("notebook")
    store = f"sqlite:///{work / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", store)  # the kernel inherits this process's environment
    try:
        nb = _with_parameters(
            nbformat.read(NOTEBOOK, as_version=4),
            # num_workers=1: DataLoader worker processes inside a kernel must come and go cleanly.
            f"settings = dict(rounds=1, epochs_per_round=2, n_train=64, n_val=32, hidden=8, batch_size=16, "
            f"num_workers=1, experiment={EXPERIMENT!r}, output_dir={str(work / 'outputs')!r})",
        )
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(work)}}
        ).execute()
    finally:
        mp.undo()
    return nb, store


def _cell(nb: nbformat.NotebookNode, source_start: str) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(source_start))


def test_notebook_trains_resumes_and_plots_in_one_kernel(executed) -> None:
    nb, store = executed
    trained = re.search(r"run ([0-9a-f]{32}): 2 epochs", _text(_cell(nb, "result = aqtrack.train")))
    assert trained, _text(_cell(nb, "result = aqtrack.train"))
    run_id = trained.group(1)
    assert f"run {run_id}: 4 epochs; val_acc logged at steps 1..4 (4 points)" in _text(
        _cell(nb, "resumed = aqtrack.train")
    )
    plots = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("aqtrack.plot_curves")]
    assert len(plots) == 2 and all(_has_image(c) for c in plots)

    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "grad_norm")] == [1, 2, 3, 4]


def test_notebook_refits_the_svm_and_lists_the_runs(executed) -> None:
    nb, store = executed
    svm_out = _text(_cell(nb, "svm = aqtrack.fit_svm"))
    refit = re.search(r"SVM refit ([0-9a-f]{32}) \(linear, C=10\): val_acc=0\.\d+", svm_out)
    assert refit, svm_out
    run_id = re.search(r"run ([0-9a-f]{32})", _text(_cell(nb, "result = aqtrack.train"))).group(1)
    client = MlflowClient(store)
    assert client.get_run(run_id).data.metrics["svm_val_acc"] > 0  # the training's own SVM stage
    nested = client.get_run(refit[1]).data
    assert nested.tags["mlflow.parentRunId"] == run_id and nested.metrics["svm_val_acc"] > 0

    table = _cell(nb, "aqtrack.runs_table")
    html = next(o["data"]["text/html"] for o in table.outputs if "text/html" in o.get("data", {}))
    assert run_id in html


def test_training_leaves_no_active_run_or_worker_processes_in_the_kernel(executed) -> None:
    nb, _ = executed
    assert "active MLflow run: None | child processes: []" in _text(_cell(nb, "# Training leaves nothing"))
