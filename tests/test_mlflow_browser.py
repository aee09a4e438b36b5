"""A compile's run in the MLflow UI, in a real headless Chromium: its page shows the trial metric chart.

The compile (APE on the fake world of ``support.fake_world``) is tracked in a real ``mlflow server`` on
loopback (``support.mlflow_server``); the run's *Model metrics* tab, a JavaScript app, is awaited until the
chart of ``trial/val/score`` has drawn one point per validation trial. The page is saved as
``docs/mlflow.png``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dspy_ext.experiment import RunSettings, run

from support.browser import chromium, needs_chromium
from support.fake_world import fake_world_lm, write_task
from support.mlflow_server import MlflowServer

pytestmark = needs_chromium
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "mlflow.png"
METRIC = "trial/val/score"
#: Seconds MLflow's JavaScript app has to load and draw (it is large, and the machine may be busy).
UI_WAIT = 180


def _chart(driver, metric: str):
    """The chart card whose legend names ``metric``, once its plot has drawn points (else ``False``)."""
    from selenium.webdriver.common.by import By

    for card in driver.find_elements(By.CSS_SELECTOR, '[data-testid="experiment-view-compare-runs-card"]'):
        if f"({metric})" in card.text and card.find_elements(By.CSS_SELECTOR, ".js-plotly-plot g.trace.scatter"):
            points = card.find_elements(By.CSS_SELECTOR, "g.trace.scatter g.points path")
            if points:
                return card
    return False


def test_the_mlflow_ui_shows_a_compiles_metric_chart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    task = write_task(tmp_path / "sentiment-demo", n_train=40, n_test=16)
    with MlflowServer(tmp_path / "server") as server, chromium(1280, 820, page_load=UI_WAIT) as driver:
        settings = RunSettings(
            data=str(task),
            out=str(tmp_path / "sentiment-ape-s0"),
            optimizer="ape",
            budget=80,
            train=12,
            val=8,
            threads=1,
            adapter="plain",
            tracking={"mlflow": server.uri},
        )
        run(settings, lm=fake_world_lm())
        client = MlflowClient(tracking_uri=server.uri)
        experiment = client.get_experiment_by_name("sentiment-demo")
        (mlrun,) = client.search_runs([experiment.experiment_id])
        history = client.get_metric_history(mlrun.info.run_id, METRIC)
        assert len(history) >= 2

        run_page = f"{server.uri}/#/experiments/{experiment.experiment_id}/runs/{mlrun.info.run_id}"
        driver.get(f"{run_page}/model-metrics")
        wait = WebDriverWait(
            driver, UI_WAIT, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
        )
        header = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="runs-header"]'))
        wait.until(lambda d: header.text == "sentiment-ape-s0")
        search = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, 'input[placeholder="Search metric charts"]'))
        search.send_keys("trial/val", Keys.ENTER)  # the validation trials' charts only
        card = wait.until(lambda d: _chart(d, METRIC))
        points = card.find_elements(By.CSS_SELECTOR, "g.trace.scatter g.points path")
        assert len(points) == len(history)  # one point per validation trial, at its step (LM calls so far)
        assert card.find_element(By.CSS_SELECTOR, ".js-plotly-plot").is_displayed()
        for close in driver.find_elements(By.CSS_SELECTOR, 'button[aria-label="Close"]'):
            if close.is_displayed():
                close.click()  # MLflow's assistant panel, beside the charts
        wait.until(lambda d: _chart(d, METRIC))
        SCREENSHOT.parent.mkdir(exist_ok=True)
        driver.save_screenshot(str(SCREENSHOT))
    assert os.path.getsize(SCREENSHOT) > 10_000
