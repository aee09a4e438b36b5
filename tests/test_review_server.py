"""The review server over real HTTP on 127.0.0.1: token, Host check, body limit, escaping, concurrency, CLI."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dspy_ext.review import CheckSpec, ReviewApp, ReviewServer, ReviewStore

XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


class Client:
    """A small HTTP client for one server: token header on writes, the cookie after opening the URL."""

    def __init__(self, server: ReviewServer, name: str = "tab") -> None:
        self.server, self.name, self.cookie = server, name, None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        all_headers = {
            "X-Review-Client": self.name,
            **({"Cookie": self.cookie} if self.cookie else {}),
            **(headers or {}),
        }
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response, data

    def open(self) -> str:
        response, _ = self.request("GET", f"/?token={self.server.app.token}")
        assert response.status == 303
        self.cookie = response.getheader("set-cookie").split(";")[0]
        location = response.getheader("location")
        response, _ = self.request("GET", location)
        assert response.status == 303  # / picks an item
        response, page = self.request("GET", response.getheader("location"))
        assert response.status == 200
        return page.decode()

    def post(self, path: str, payload: dict, token: str | None = "default", **headers):
        token = self.server.app.token if token == "default" else token
        head = {"Content-Type": "application/json", **({"X-Review-Token": token} if token else {}), **headers}
        response, data = self.request("POST", path, json.dumps(payload).encode(), head)
        return response.status, json.loads(data or b"{}")


@pytest.fixture
def server(tmp_path: Path):
    store = ReviewStore(tmp_path / "review.sqlite")
    for i in range(20):
        store.add_output(
            {"input": f"input {i}"},
            {"output": XSS if i == 0 else f"output {i}"},
            prompt_version="v1",
            gold={"output": "gold"},
        )
    with ReviewServer(ReviewApp(store, max_body=4096), port=0) as running:
        yield running
    store.close()


def keys(server: ReviewServer) -> list[str]:
    return [i.key for i in server.app.store.items()]


def test_binds_loopback_and_prints_a_url_with_the_token(server: ReviewServer) -> None:
    assert server.socket.getsockname()[0] == "127.0.0.1"
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=[\w-]{20,}", server.url)


def test_writes_without_the_token_are_refused(server: ReviewServer) -> None:
    client = Client(server)
    key = keys(server)[1]
    assert client.post(f"/api/items/{key}/grade", {"grade": "good"}, token=None) == (
        403,
        {"error": "write refused: missing or wrong X-Review-Token"},
    )
    assert client.post(f"/api/items/{key}/grade", {"grade": "good"}, token="guess")[0] == 403
    assert server.app.store.item(key).grade is None
    # Reads need the token (cookie) too; a form post (no JSON) is refused even with the token.
    assert client.request("GET", f"/item/{key}")[0].status == 403
    response, _ = client.request(
        "POST",
        f"/api/items/{key}/grade",
        b"grade=good",
        {"Content-Type": "application/x-www-form-urlencoded", "X-Review-Token": server.app.token},
    )
    assert response.status == 415
    assert client.post(f"/api/items/{key}/grade", {"grade": "good"})[0] == 200
    assert server.app.store.item(key).grade == "good"


def test_a_foreign_host_header_is_refused(server: ReviewServer) -> None:
    response, _ = Client(server).request("GET", f"/?token={server.app.token}", headers={"Host": "evil.example"})
    assert response.status == 400


def test_request_bodies_are_size_limited(server: ReviewServer) -> None:
    client = Client(server)
    key = keys(server)[1]
    status, body = client.post(f"/api/items/{key}/reason", {"reason": "x" * 10_000})
    assert status == 413 and "over 4096 bytes" in body["error"]
    # A chunked body that declares no length is cut off as it streams.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", f"/api/items/{key}/reason")
    for name, value in (
        ("Content-Type", "application/json"),
        ("X-Review-Token", server.app.token),
        ("Transfer-Encoding", "chunked"),
    ):
        conn.putheader(name, value)
    conn.endheaders()
    chunk = b'{"reason": "' + b"y" * 3000
    for _ in range(3):
        conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    conn.send(b"0\r\n\r\n")
    assert conn.getresponse().status == 413
    conn.close()
    assert server.app.store.item(key).reason is None


def test_outputs_and_reviewer_text_are_escaped_in_the_page(server: ReviewServer) -> None:
    client = Client(server)
    client.open()
    xss_key = keys(server)[0]
    assert client.post(f"/api/items/{xss_key}/grade", {"grade": "bad", "reason": "</script><b>bold</b>"})[0] == 200
    response, page = client.request("GET", f"/item/{xss_key}")
    html = page.decode()
    assert "<script>window.__xss" not in html and "<img src=x" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;&lt;img src=x onerror=" in html
    assert "script-src 'self'" in response.getheader("content-security-policy")
    # The JSON the script reads is escaped too: no "</script>" can close its tag.
    state = re.search(r'<script type="application/json" id="review-state">(.*?)</script>', html, re.S).group(1)
    assert "<" not in state and json.loads(state)["reason"] == "</script><b>bold</b>"


def test_two_tabs_writing_at_once_lose_nothing(server: ReviewServer) -> None:
    all_keys = keys(server)
    crit = server.app.store.add_criterion("short", check=CheckSpec.parse("max_words:2"))
    errors: list = []

    def tab(name: str, mine: list[str]) -> None:
        client = Client(server, name)
        for key in all_keys:  # both tabs write every item: grades from one, reasons/corrections from the other
            if name == "a":
                results = [
                    client.post(f"/api/items/{key}/grade", {"grade": "good"}),
                    client.post(f"/api/items/{key}/criteria/{crit.id}", {"passed": True}),
                ]
            else:
                results = [
                    client.post(f"/api/items/{key}/reason", {"reason": f"reason {key}"}),
                    client.post(f"/api/items/{key}/correction", {"correction": f"fix {key}"}),
                ]
            errors.extend(r for r in results if r[0] != 200)

    threads = [threading.Thread(target=tab, args=(name, all_keys)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for item in server.app.store.items():
        assert (item.grade, item.reason, item.correction, item.judgements) == (
            "good",
            f"reason {item.key}",
            f"fix {item.key}",
            {crit.id: True},
        )


def test_navigation_undo_criteria_and_report_over_http(server: ReviewServer) -> None:
    client = Client(server, "nav")
    client.open()
    response, data = client.request("GET", "/api/next?filter=unreviewed")
    first = json.loads(data)
    assert response.status == 200 and first["key"] in keys(server)
    second = json.loads(client.request("GET", f"/api/next?filter=unreviewed&current={first['key']}")[1])
    assert second["key"] != first["key"]
    status, item = client.post(f"/api/items/{first['key']}/grade", {"grade": "bad"})
    assert status == 400 and "needs a reason" in item["error"]
    status, item = client.post(f"/api/items/{first['key']}/grade", {"grade": "bad", "reason": "wrong"})
    assert (status, item["grade"], item["reviewed"], item["total"]) == (200, "bad", 1, 20)
    assert client.post("/api/undo", {}) == (200, {"key": first["key"]})
    assert server.app.store.item(first["key"]).grade is None
    assert client.post("/api/undo", {}) == (200, {"key": None})
    status, crit = client.post(
        "/api/criteria", {"name": "terse", "description": "two words at most", "check": "max_words:2"}
    )
    assert status == 200 and crit["version"] == 1
    assert client.post("/api/criteria", {"name": "x", "check": "regex:("})[0] == 400
    status, edited = client.post(f"/api/criteria/{crit['id']}", {"description": "at most two words"})
    assert edited["version"] == 2
    client.post(f"/api/items/{keys(server)[3]}/grade", {"grade": "good"})
    report = json.loads(client.request("GET", "/api/report")[1])
    assert report["criteria"][0]["candidates"][0]["check"] == "max_words:2"
    assert client.post("/api/propose", {"item": first["key"]})[0] == 503  # no LM given to this server
    response, page = client.request("GET", "/criteria")
    assert response.status == 200 and "false failure rate" in page.decode()
    response, _ = client.request("GET", "/api/next?filter=crit:999")
    assert response.status == 400
    # By criterion: outputs marked failed, and unmarked ones its chosen check fails (max_words:2 fails the
    # hostile output, whose text is long).
    marked = keys(server)[5]
    client.post(f"/api/items/{marked}/criteria/{crit['id']}", {"passed": False})
    client.post(f"/api/items/{keys(server)[0]}/grade", {"grade": "bad", "reason": "markup"})
    failing = set()
    current = ""
    for _ in range(4):
        current = json.loads(client.request("GET", f"/api/next?filter=crit:{crit['id']}&current={current}")[1])["key"]
        failing.add(current)
    assert failing == {keys(server)[0], marked}
    assert str(server.app.store.criterion(crit["id"]).chosen_check.spec) == "max_words:2"  # re-aligned on read
    assert json.loads(client.request("GET", "/api/next?filter=bad")[1])["key"] == keys(server)[0]


def run_cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dspy_ext", "review", *argv], capture_output=True, text=True, timeout=timeout
    )


def test_cli_export_import_round_trip_and_report(tmp_path: Path) -> None:
    source = tmp_path / "source.sqlite"
    with ReviewStore(source) as store:
        for i in range(5):
            key = store.add_output(
                {"input": f"q{i}"}, {"output": f"a{i}" if i % 2 else f"a {i} b c"}, prompt_version="v1"
            )
            store.set_grade(key, "good" if i % 2 else "bad", None if i % 2 else "too long")
        store.add_criterion("short", "one word", CheckSpec.parse("max_words:1"))
    labels = tmp_path / "labels.jsonl"
    done = run_cli("--store", str(source), "--export", str(labels))
    assert done.returncode == 0, done.stderr
    assert "exported 5 rows" in done.stdout
    fresh = tmp_path / "fresh.sqlite"
    done = run_cli("--store", str(fresh), "--import", str(labels), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["import"] == {"rows": 5, "added_items": 5, "graded": 5, "skipped_graded": 0}
    with ReviewStore(source) as a, ReviewStore(fresh) as b:
        assert [(i.key, i.grade, i.reason) for i in a.items()] == [(i.key, i.grade, i.reason) for i in b.items()]
    done = run_cli("--store", str(source), "--report", "--json")
    report = json.loads(done.stdout)["report"]
    check = report["criteria"][0]["candidates"][0]
    assert (check["coverage"], check["false_failure_rate"], check["chosen"]) == (1.0, 0.0, True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    done = run_cli("--store", str(fresh), "--import", str(bad))
    assert done.returncode == 2 and "bad.jsonl, line 1: not valid JSON" in done.stderr
    done = run_cli("--import", str(bad))
    assert done.returncode == 2 and "give a RUN_DIR, --task/--data" in done.stderr


def test_cli_serves_an_existing_store_and_prints_the_url(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ReviewStore(path) as store:
        store.add_output({"input": "q"}, {"output": "a"}, prompt_version="v1")
    process = subprocess.Popen(
        [sys.executable, "-m", "dspy_ext", "review", "--store", str(path), "--port", "0", "--serve-seconds", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = None
        for line in process.stdout:
            if line.startswith("open "):
                url = line.split()[1]
                break
        assert url and url.startswith("http://127.0.0.1:")
        port, token = int(url.split(":")[2].split("/")[0]), url.split("token=")[1]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f"/?token={token}")
        assert conn.getresponse().status == 303
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_an_unknown_filter_on_the_page_is_a_400_that_names_it(server: ReviewServer) -> None:
    client = Client(server)
    client.open()
    for bad, said in (("crit:99", "no criterion 99"), ("nonsense", "unknown filter &#39;nonsense&#39;")):
        response, page = client.request("GET", f"/?filter={bad}")
        assert response.status == 400, (bad, response.status)
        assert said in page.decode()
