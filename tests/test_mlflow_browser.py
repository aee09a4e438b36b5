"""A compile's run in the MLflow UI, in a real headless Chromium: its page shows the trial metric chart.

The compile (APE on the fake world of ``support.fake_world``) is tracked in a real ``mlflow server`` on
loopback (``support.mlflow_server``); the run's *Model metrics* tab, a JavaScript app, is awaited until the
chart of ``trial/val/score`` has drawn one point per validation trial. ``bench/mlflow_picture.py`` takes the
same page of a compile on the embedded model for ``docs/mlflow.png``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dspy_ext.experiment import RunSettings, run

from support.browser import chromium, needs_chromium
from support.fake_world import fake_world_lm, write_task
from support.mlflow_server import MlflowServer
from support.mlflow_ui import UI_WAIT, open_metric_chart

pytestmark = needs_chromium
METRIC = "trial/val/score"


def test_the_mlflow_ui_shows_a_compiles_metric_chart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient
    from selenium.webdriver.common.by import By

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

        card = open_metric_chart(
            driver, server.uri, experiment.experiment_id, mlrun.info.run_id, "sentiment-ape-s0", METRIC
        )
        points = card.find_elements(By.CSS_SELECTOR, "g.trace.scatter g.points path")
        assert len(points) == len(history)  # one point per validation trial, at its step (LM calls so far)
        assert card.find_element(By.CSS_SELECTOR, ".js-plotly-plot").is_displayed()
        driver.save_screenshot(str(tmp_path / "mlflow.png"))
    assert (tmp_path / "mlflow.png").stat().st_size > 10_000
