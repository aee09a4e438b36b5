"""The parts behind ReviewStore and ReviewApp: the label codec, the access guard, shared page options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dspy_ext.review import ReviewApp, ReviewError, ReviewStore
from dspy_ext.review.codec import LabelRow, parse_label_row, read_label_file
from dspy_ext.review.guard import AccessGuard
from dspy_ext.review.options import ReviewOptions


def test_a_label_row_reads_other_tools_words_and_writes_back_the_store_format() -> None:
    row = parse_label_row('{"input": "a", "output": "b", "grade": "thumbs_down", "reason": "no"}', "here")
    assert row == LabelRow({"input": "a"}, {"output": "b"}, None, "bad", "no", None, {}, [])
    assert list(row.to_json()) == [
        "input",
        "output",
        "gold",
        "grade",
        "reason",
        "correction",
        "criteria",
        "prompt_versions",
    ]
    with pytest.raises(ReviewError, match="here: a bad grade needs a reason"):
        parse_label_row('{"input": "a", "output": "b", "grade": 0}', "here")


def test_export_rows_are_label_rows_of_the_items(tmp_path: Path) -> None:
    with ReviewStore(tmp_path / "r.sqlite") as store:
        key = store.add_output({"input": "a"}, {"output": "b"}, prompt_version="v1")
        criterion = store.add_criterion("short")
        store.set_judgement(key, criterion.id, False)
        store.set_grade(key, "bad", "too long")
        assert store.export_jsonl(tmp_path / "out.jsonl") == 1
        (row,) = read_label_file(tmp_path / "out.jsonl")
        assert row == LabelRow.of_item(store.item(key), {criterion.id: "short"})
        assert json.loads((tmp_path / "out.jsonl").read_text())["criteria"] == {"short": False}


def _scope(method: str, path: str = "/api/report", query: bytes = b"") -> dict:
    return {"type": "http", "method": method, "path": path, "query_string": query, "headers": []}


def test_the_guard_wants_the_loopback_host_and_the_token() -> None:
    options = ReviewOptions(token="secret", port=8123)
    guard = AccessGuard(None, options)
    ok_host = {"host": "127.0.0.1:8123"}
    assert guard.refusal(_scope("GET"), {"host": "evil.example:8123"})[0] == 400
    assert guard.refusal(_scope("GET"), ok_host)[0] == 403
    assert guard.refusal(_scope("GET", query=b"token=secret"), ok_host) is None
    assert guard.refusal(_scope("GET"), {**ok_host, "cookie": "dspy_ext_review_8123=secret"}) is None
    assert guard.refusal(_scope("GET", path="/static/review.css"), ok_host) is None
    writing = {**ok_host, "x-review-token": "secret"}
    assert guard.refusal(_scope("POST"), writing)[0] == 415
    assert guard.refusal(_scope("POST"), {**writing, "content-type": "application/json"}) is None
    assert guard.refusal(_scope("POST"), {**ok_host, "content-type": "application/json"})[0] == 403


def test_the_app_settings_are_the_options_its_parts_read() -> None:
    app = ReviewApp(ReviewStore(":memory:"), token="t", changed_since="v2", title="T")
    assert (app.token, app.default_filter, app.title, app.port) == ("t", "changed", "T", None)
    app.port = 4567  # what ReviewServer does once it listens
    assert app.options.port == 4567 and app.cookie_name == "dspy_ext_review_4567"
