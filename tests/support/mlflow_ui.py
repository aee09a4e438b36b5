"""The MLflow UI in headless Chromium: a run's *Model metrics* tab, awaited until a metric's chart is drawn."""

from __future__ import annotations

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


def open_metric_chart(driver, base: str, experiment_id: str, run_id: str, run_name: str, metric: str):
    """Open the run's *Model metrics* tab at ``base`` (an ``mlflow server``), show the charts of ``metric``'s
    group, close MLflow's assistant panel, and return the chart card of ``metric`` once it has drawn."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics")
    wait = WebDriverWait(driver, UI_WAIT, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    header = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="runs-header"]'))
    wait.until(lambda d: header.text == run_name)
    search = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, 'input[placeholder="Search metric charts"]'))
    search.send_keys(metric.rsplit("/", 1)[0], Keys.ENTER)  # the charts of the metric's group only
    wait.until(lambda d: _chart(d, metric))
    for close in driver.find_elements(By.CSS_SELECTOR, 'button[aria-label="Close"]'):
        if close.is_displayed():
            close.click()  # MLflow's assistant panel, beside the charts
    return wait.until(lambda d: _chart(d, metric))
