"""The MLflow UI in a real browser: `mlflow server` on a store holding an aqtrack run, its run page
opened in headless Chromium (Debian's `chromium`, driven by Playwright).

Screenshots go to $AQTRACK_TEST_ARTIFACTS (CI sets it to test-artifacts/ in the checkout), else to the
test's tmp_path; the test prints where, and records it as the junit property `screenshots`.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow_server import MlflowServer

import aqtrack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> Iterator[MlflowServer]:
    """One `mlflow server` for the module, on a store of its own: each test trains into an experiment
    of its own there, so neither sees the other's runs."""
    root = tmp_path_factory.mktemp("ui")
    shutil.copyfile(empty_store, root / "mlflow.db")
    server = MlflowServer(root, backend_store_uri=f"sqlite:///{root / 'mlflow.db'}").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(ui_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> MlflowServer:
    """The module's server, its store the tracking store of the test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ui_server.backend_store_uri)
    return ui_server


@pytest.fixture
def screenshots(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    root = os.environ.get("AQTRACK_TEST_ARTIFACTS")
    directory = Path(root) / "ui" if root else tmp_path / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    request.node.user_properties.append(("screenshots", str(directory)))
    return directory


def _metric_rows(page) -> dict[str, str]:
    """{name: value} of the Overview's metrics table (the rows between its header and the params')."""
    rows = [r.inner_text().split("\n") for r in page.get_by_role("row").all()]
    cells = [[c.strip() for c in row if c.strip()] for row in rows]
    start = cells.index(["Metric", "Value"]) + 1
    end = cells.index(["Parameter", "Value"])
    return {row[0]: row[1] for row in cells[start:end]}


def test_run_page_shows_grad_norm_lr_and_checkpoint_artifacts(tiny, server, screenshots):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)  # the first page load compiles a large bundle
    started = time.monotonic()
    result = aqtrack.train(**tiny, experiment="ui-run")
    run = MlflowClient().get_run(result.run_id)
    url = f"{server.url}/#/experiments/{run.info.experiment_id}/runs/{result.run_id}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)

            # Overview: the run's name, its description and its metrics table.
            expect(page.get_by_role("heading", name=run.info.run_name)).to_be_visible()
            expect(page.get_by_text(re.compile(r"4 of 4 epochs; best epoch \d by val_acc"))).to_be_visible()
            page.get_by_role("row").filter(has_text="grad_norm").first.wait_for()
            rows = _metric_rows(page)
            assert float(rows["grad_norm"]) == run.data.metrics["grad_norm"]
            assert float(rows["lr"]) == run.data.metrics["lr"]
            page.screenshot(path=screenshots / "overview.png", full_page=True)

            # Model metrics: one chart per metric, each drawn for this run.
            page.get_by_role("tab", name="Model metrics").click()
            for key in ("grad_norm", "lr"):
                expect(page.get_by_text(f"{run.info.run_name} ({key})", exact=True)).to_be_visible()
            page.screenshot(path=screenshots / "model-metrics.png", full_page=True)

            # Artifacts: checkpoints/ and, once opened, its files.
            page.get_by_role("tab", name="Artifacts").click()
            page.get_by_text("checkpoints", exact=True).click()
            for name in ("last.pt", "last.pt.manifest.json", "best_action_quality_model.pt"):
                expect(page.get_by_text(name, exact=True)).to_be_visible()
            expect(page.get_by_text("action_quality_round_2_epoch_2.pt", exact=True)).to_be_visible()
            expect(page.get_by_text("experiment_report.json", exact=True)).to_be_visible()
            page.screenshot(path=screenshots / "artifacts.png", full_page=True)
        finally:
            browser.close()
    print(f"UI screenshots in {screenshots} ({time.monotonic() - started:.1f} s)")
    assert {p.name for p in screenshots.iterdir()} >= {"overview.png", "model-metrics.png", "artifacts.png"}


def test_experiment_page_nests_the_folds_of_a_cross_validation_under_its_parent(tiny, server, screenshots):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    result = aqtrack.cross_validate(
        **{**tiny, "folds": "2", "rounds": 1, "svm": False, "experiment": "ui-cv"}
    )
    parent = MlflowClient().get_run(result.run_id)
    experiment = f"{server.url}/#/experiments/{parent.info.experiment_id}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{experiment}/runs")

            # Training runs: one row, the parent; its two folds are nested (3 runs match).
            name_cell = page.get_by_role("gridcell").filter(has_text=parent.info.run_name).first
            expect(name_cell).to_be_visible()
            expect(page.get_by_text("3 matching runs")).to_be_visible()
            expect(page.get_by_text("fold-1-of-2", exact=True)).to_have_count(0)
            page.screenshot(path=screenshots / "cv-collapsed.png", full_page=True)
            name_cell.get_by_role("button").first.click()  # the parent's expander
            for fold in ("fold-1-of-2", "fold-2-of-2"):
                expect(page.get_by_text(fold, exact=True)).to_be_visible()
            page.screenshot(path=screenshots / "cv-expanded.png", full_page=True)

            # The parent's page: the aggregate in its description, the cv/ artifacts.
            page.goto(f"{experiment}/runs/{result.run_id}")
            expect(page.get_by_text(re.compile(r"2 of 2 folds finished"))).to_be_visible()
            page.get_by_role("tab", name="Artifacts").click()
            page.get_by_text("cv", exact=True).click()
            for name in ("oof_predictions.csv", "folds.json", "folds.png", "confusion_matrix.png"):
                expect(page.get_by_text(name, exact=True)).to_be_visible()
            page.screenshot(path=screenshots / "cv-artifacts.png", full_page=True)
        finally:
            browser.close()
    assert {p.name for p in screenshots.iterdir()} >= {
        "cv-collapsed.png",
        "cv-expanded.png",
        "cv-artifacts.png",
    }
