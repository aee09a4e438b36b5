"""The picture of a compile in the MLflow UI (``docs/mlflow.png``), from a real compile on the embedded model.

Starts ``mlflow server`` on loopback (a SQLite store in a temporary folder), compiles the built-in
``sentiment`` task with APE on the embedded SmolLM2 model, tracked there (``--mlflow``), and saves the run's
*Model metrics* tab, drawn by headless Chromium, as ``docs/mlflow.png``.

    PYTHONPATH=.:tests python bench/mlflow_picture.py [--budget 60] [--out docs/mlflow.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dspy_ext.experiment import RunSettings, run

from support.browser import chromium
from support.mlflow_server import MlflowServer
from support.mlflow_ui import UI_WAIT, open_metric_chart

DOCS = Path(__file__).resolve().parents[1] / "docs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=60)
    parser.add_argument("--out", type=Path, default=DOCS / "mlflow.png")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    work = Path(tempfile.mkdtemp())
    with MlflowServer(work / "server") as server, chromium(1280, 820, page_load=UI_WAIT) as driver:
        name = f"sentiment-ape-s0-b{args.budget}"
        settings = RunSettings(
            task="sentiment",
            optimizer="ape",
            budget=args.budget,
            train=20,
            val=20,
            threads=1,
            out=str(work / name),
            tracking={"mlflow": server.uri},
        )
        summary = run(settings).summary
        client = MlflowClient(tracking_uri=server.uri)
        experiment = client.get_experiment_by_name("sentiment")
        (mlrun,) = client.search_runs([experiment.experiment_id])
        open_metric_chart(driver, server.uri, experiment.experiment_id, mlrun.info.run_id, name, "trial/val/score")
        driver.save_screenshot(str(args.out))
    print(f"{args.out}: run {name}, test {summary.scores.test:.1f}%, {summary.spend.lm_calls} LM calls")


if __name__ == "__main__":
    main()
