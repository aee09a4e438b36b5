"""Review page latency: from a key press (or an HTTP write) to a saved grade, with 1,000 items in the store.

The store holds 1,000 outputs (100 already graded) and 3 criteria with built-in checks, in a SQLite file
on disk; the server is the real one (uvicorn on 127.0.0.1). Three figures:

* **HTTP write**: one ``POST /api/items/KEY/grade`` (or reason, or criterion mark) on a kept-alive
  connection, until the JSON answer is read: the server and the SQLite commit alone;
* **key press -> saved** (headless Chromium, when installed): from the ``keydown`` of ``g`` to the
  page having the server's answer (the script records ``performance.now()`` at both ends);
* **j -> next output shown** (Chromium): from pressing ``j`` to the next page's script running (the page
  records the time in ``sessionStorage``); this includes choosing the next output (the sampler scores
  all 1,000 items), rendering the page and loading it.

    PYTHONPATH=. python bench/review_latency.py            # writes its section of docs/benchmarks.md
    PYTHONPATH=. python bench/review_latency.py --no-write # prints only
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._docs import write_section
from dspy_ext.review import CheckSpec, ReviewApp, ReviewServer, ReviewStore

WORDS = [
    "positive",
    "negative",
    "the",
    "film",
    "is",
    "a",
    "great",
    "bad",
    "movie",
    "plot",
    "acting",
    "I",
    "think",
    "sentiment",
    "review",
]


def build_store(path: Path, n_items: int, seed: int) -> ReviewStore:
    rng = random.Random(seed)
    store = ReviewStore(path)
    for i in range(n_items):
        output = rng.choice(["positive", "negative"]) if rng.random() < 0.7 else " ".join(rng.choices(WORDS, k=6))
        store.add_output(
            {"input": f"review text number {i}: " + " ".join(rng.choices(WORDS, k=12))},
            {"output": output},
            prompt_version="v1",
            gold={"output": "positive"},
        )
    for name, check in (
        ("label", "one_of:positive,negative"),
        ("short", "max_words:2"),
        ("no apology", "not_contains:sorry"),
    ):
        store.add_criterion(name, f"{name} check", CheckSpec.parse(check))
    for item in rng.sample(store.items(), 100):
        store.set_grade(item.key, "good")
    return store


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median_ms": statistics.median(values), "p95_ms": percentile(values, 0.95)}


def http_writes(server: ReviewServer, keys: list[str], criterion_id: int, n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.connect()
    # http.client sends the headers and the body in two packets; without TCP_NODELAY, Nagle's algorithm and the
    # server's delayed ACK add about 40 ms to every request, which is the client's artefact, not the server's.
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    headers = {"Content-Type": "application/json", "X-Review-Token": server.app.token, "X-Review-Client": "bench"}
    timings = []
    for i in range(n + 20):
        key = rng.choice(keys)
        kind = i % 3
        if kind == 0:
            path, body = f"/api/items/{key}/grade", {"grade": "good"}
        elif kind == 1:
            path, body = f"/api/items/{key}/grade", {"grade": "bad", "reason": f"reason {i}"}
        else:
            path, body = f"/api/items/{key}/criteria/{criterion_id}", {"passed": bool(i % 2)}
        started = time.perf_counter()
        conn.request("POST", path, json.dumps(body).encode(), headers)
        response = conn.getresponse()
        response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(f"write failed: HTTP {response.status}")
        if i >= 20:  # the first writes warm up the connection and SQLite's page cache
            timings.append(elapsed)
    conn.close()
    return timings


def browser_presses(server: ReviewServer, n: int) -> tuple[list[float], list[float]] | None:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = Options()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    wait = WebDriverWait(driver, 30, poll_frequency=0.01)
    saves, navigations = [], []
    try:
        driver.get(server.url)
        wait.until(lambda d: d.find_elements(By.ID, "item"))
        for i in range(n + 5):
            ActionChains(driver).send_keys("g").perform()
            wait.until(lambda d: d.execute_script("return window.reviewTimings.length") > 0)
            saved = driver.execute_script("return window.reviewTimings[0]")
            before = driver.find_element(By.ID, "item").get_attribute("data-key")
            ActionChains(driver).send_keys("j").perform()
            wait.until(
                lambda d, before=before: d.execute_script(
                    "var n = document.getElementById('item'); return !!n && n.dataset.key !== arguments[0] "
                    "&& typeof window.reviewNavMs === 'number'",
                    before,
                )
            )
            if i >= 5:
                saves.append(saved)
                navigations.append(driver.execute_script("return window.reviewNavMs"))
    finally:
        driver.quit()
    return saves, navigations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--writes", type=int, default=600)
    parser.add_argument("--presses", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        store = build_store(Path(folder) / "review.sqlite", args.items, args.seed)
        keys = [i.key for i in store.items()]
        criterion_id = store.criteria()[0].id
        with ReviewServer(ReviewApp(store), port=0) as server:
            http_ms = summary(http_writes(server, keys, criterion_id, args.writes, args.seed))
            browser = browser_presses(server, args.presses)
        total = store.progress()[1]
        store.close()
    result = {"items": total, "http_write": http_ms}
    if browser is not None:
        result["key_press_to_saved"] = summary(browser[0])
        result["j_to_next_output_shown"] = summary(browser[1])
    print(json.dumps(result, indent=2))
    if args.no_write:
        return 0
    cpu = f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    rows = [("HTTP write (grade, reason or criterion mark) -> JSON answer", http_ms)]
    if browser is not None:
        rows += [
            ("key press `g` -> saved (headless Chromium)", result["key_press_to_saved"]),
            ("key press `j` -> next output shown (headless Chromium)", result["j_to_next_output_shown"]),
        ]
    table = "\n".join(f"| {name} | {s['n']} | {s['median_ms']:.1f} | {s['p95_ms']:.1f} |" for name, s in rows)
    browser_note = (
        "" if browser is not None else "\n\nChromium was not installed, so only the HTTP figure was measured.\n"
    )
    body = f"""`bench/review_latency.py`: a SQLite store on disk with {total} outputs (100 graded) and 3 criteria with
built-in checks; the real server (uvicorn, 127.0.0.1); {cpu}; other agents' jobs shared the cores.

| from → to | n | median ms | p95 ms |
|---|---|---|---|
{table}

The goal was under 50 ms median from a key press to a saved grade. The key press figure is measured in the
page (`keydown` to the answer parsed, `performance.now()`); a write is one SQLite transaction (WAL journal,
`synchronous=NORMAL`: a crash of the process loses nothing committed; a power loss may lose the last
writes). Moving to the next output costs more than saving: after a grade the server re-aligns every criterion's
checks with the grades, and the sampler scores every item (checks and sample disagreement) to pick the most
informative one.{browser_note}

    PYTHONPATH=. python bench/review_latency.py
"""
    write_section("Human review: key press to saved grade (1,000 items)", body)
    print("wrote docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
