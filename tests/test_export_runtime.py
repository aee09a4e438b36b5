"""Tests for ``dspy_ext.runtime``: value formatting and parsing parity, bad files, no-DSPy import."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Literal

import dspy
import pytest
from dspy.adapters.utils import format_field_value
from dspy.adapters.utils import parse_value as dspy_parse_value

from dspy_ext.adapters import PlainAdapter
from dspy_ext.export import build_artifact, export, runtime
from dspy_ext.export.exporter import annotation_type
from dspy_ext.runtime import (
    ArtifactError,
    RenderError,
    compute_hash,
    format_type,
    format_value,
    load,
    loads,
    parse_type,
    parse_value,
)

RUNTIME_FILE = Path(runtime.__file__)


def _field(annotation: Any) -> Any:
    return dspy.Signature({"x": (annotation, dspy.InputField()), "y": (str, dspy.OutputField())}).input_fields["x"]


def _sentiment_program() -> dspy.Predict:
    program = dspy.Predict(dspy.Signature("input -> output", "Say {positive} or {{negative}}."))
    program.demos = [dspy.Example(input="great", output="positive")]
    return program


@pytest.fixture
def artifact_file(tmp_path: Path) -> Path:
    path = tmp_path / "a.json"
    export(_sentiment_program(), path, adapter=dspy.ChatAdapter())
    return path


def _rewrite(path: Path, change, rehash: bool = True) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    if rehash:
        data["content_hash"] = compute_hash(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


# --- types ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "annotation, text",
    [
        (str, "str"),
        (int, "int"),
        (bool, "bool"),
        (Any, "Any"),
        (list[str], "list[str]"),
        (list, "list[Any]"),
        (dict[str, list[int]], "dict[str, list[int]]"),
        (float | None, "Optional[float]"),
        (list[int] | None, "Optional[list[int]]"),
        (Literal["a", "b's", 'q"'], 'Literal["a", "b\'s", "q\\""]'),
        (Literal[1, 2.5, True], "Literal[1, 2.5, true]"),
    ],
)
def test_type_strings_round_trip(annotation: Any, text: str) -> None:
    parsed = annotation_type(annotation)
    assert format_type(parsed) == text
    assert parse_type(text) == parsed


def test_literal_null_member() -> None:
    assert parse_type('Literal[null, "x"]') == ("literal", (None, "x"))


@pytest.mark.parametrize(
    "text",
    ["", "string", "list[", "dict[int, str]", "Literal[]", "Literal[a]", "Optional", "str extra", "Literal[[1]]"],
)
def test_bad_type_strings_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="bad type"):
        parse_type(text)
    with pytest.raises(TypeError, match="a type must be a string"):
        parse_type(None)


def test_unsupported_annotations_are_refused() -> None:
    for annotation in (dspy.History, dspy.Image, tuple[int, int], int | str, set[str]):
        with pytest.raises(TypeError):
            annotation_type(annotation)


# --- value formatting parity with DSPy's format_field_value ----------------------------------

VALUES = [
    "plain",
    "",
    "with {braces} and {{double}}",
    "multi\nline",
    "«quoted»",
    "é ✓ 日本",
    ["a", "b"],
    [],
    ["only"],
    ["x\ny", "«z»"],
    ["{a}", "{{b}}"],
    ("t", 1),
    {"k": [1, 2], "n": None},
    {"nested": {"z": 1.5, "b": True}},
    {1: "int key", "s": 2.5},
    3,
    -0,
    2.5,
    1e20,
    -0.0,
    True,
    False,
    None,
    float("inf"),
    [1.0, float("nan")],
    10**30,
    [1, "mixed", None, True],
]
ANNOTATIONS = [str, int, list[str], list[int], dict[str, Any], Any, str | None, Literal["a", "b"]]


@pytest.mark.parametrize("annotation", ANNOTATIONS, ids=lambda a: format_type(annotation_type(a)))
@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_format_value_matches_dspy(annotation: Any, value: Any) -> None:
    try:
        expected = format_field_value(_field(annotation), value)
    except TypeError:
        with pytest.raises(TypeError):
            format_value(value, format_type(annotation_type(annotation)))
        return
    assert format_value(value, format_type(annotation_type(annotation))) == expected


def test_format_value_refuses_unsupported_values() -> None:
    with pytest.raises(TypeError, match="unsupported value type"):
        format_value({"a": {1, 2}}, "Any")
    with pytest.raises(TypeError, match="must hold strings"):
        format_value([["nested"]], "str")


# --- value parsing parity with DSPy's parse_value --------------------------------------------

PARSE_CASES = [
    (str, ["text", " spaced ", "42", ""]),
    (int, ["42", " 7 ", "3.0", "-5", "3.5", "abc", "42 apples", "1e3", "True", 42, 3.0, 3.5, True, None]),
    (float, ["2.5", " 1 ", "1e3", "-0.5", "abc", 2, 2.5, "NaN-ish", True]),
    (bool, ["true", "True", "false", "False", "yes", "no", "1", "0", "on", "maybe", 1, 0, 2, True]),
    (
        Literal["positive", "negative"],
        ["positive", "'negative'", '"positive"', "Literal['positive']", " negative ", "Positive", "neutral"],
    ),
    (Literal[1, 2, 3], ["2", 2, "4", "'3'", 2.0]),
    (list[str], ['["a", "b"]', "[]", '["a", 1]', "not a list", ["x", "y"], ["x", 1]]),
    (list[int], ["[1, 2]", '["1", 2]', "[1.5]", [1, "2"]]),
    (dict[str, int], ['{"a": 1}', '{"a": "2"}', '{"a": "x"}', "{}", {"b": 3}]),
    (int | None, ["5", "null", "None", None, "x"]),
    (str | None, ["text", "None"]),
]


@pytest.mark.parametrize("annotation, values", PARSE_CASES, ids=lambda x: repr(x)[:40])
def test_parse_value_matches_dspy(annotation: Any, values: list[Any]) -> None:
    type_string = format_type(annotation_type(annotation))
    for value in values:
        try:
            expected = dspy_parse_value(value, annotation)
        except ValueError:
            with pytest.raises(ValueError):
                parse_value(value, type_string)
            continue
        got = parse_value(value, type_string)
        assert got == expected and type(got) is type(expected), (value, got, expected)


# --- loading: good and bad files --------------------------------------------------------------


def test_load_round_trip(artifact_file: Path) -> None:
    art = load(artifact_file)
    assert art.names == ("self",)
    assert art.schema_version == 1
    assert art.path == str(artifact_file)
    assert loads(artifact_file.read_text(encoding="utf-8")).data == art.data
    assert len(art.content_hash) == 64


def test_truncated_file(artifact_file: Path) -> None:
    text = artifact_file.read_text(encoding="utf-8")
    artifact_file.write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(ArtifactError, match=r"not valid JSON \(truncated or corrupted\?\).*line \d+"):
        load(artifact_file)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(ArtifactError, match="the file is empty"):
        load(empty)
    with pytest.raises(ArtifactError, match="cannot read the artifact"):
        load(tmp_path / "missing.json")


def test_tampered_file_fails_the_hash(artifact_file: Path) -> None:
    def edit(data: dict) -> None:
        data["predictors"]["self"]["messages"][0]["content"] += " Also be rude."

    _rewrite(artifact_file, edit, rehash=False)
    with pytest.raises(ArtifactError, match="content hash mismatch.*edited or corrupted"):
        load(artifact_file)


def test_edited_hash_fails(artifact_file: Path) -> None:
    _rewrite(artifact_file, lambda d: d.update(content_hash="0" * 64), rehash=False)
    with pytest.raises(ArtifactError, match="content hash mismatch"):
        load(artifact_file)


def test_future_version(artifact_file: Path) -> None:
    _rewrite(artifact_file, lambda d: d.update(schema_version=2))
    with pytest.raises(ArtifactError, match="schema_version 2 is newer than this runtime supports.*upgrade"):
        load(artifact_file)


def test_unknown_version_and_schema(artifact_file: Path) -> None:
    _rewrite(artifact_file, lambda d: d.update(schema_version=0))
    with pytest.raises(ArtifactError, match="schema_version 0 is unknown"):
        load(artifact_file)
    _rewrite(artifact_file, lambda d: d.update(schema_version="1"))
    with pytest.raises(ArtifactError, match="schema_version: expected an integer, got a string"):
        load(artifact_file)
    _rewrite(artifact_file, lambda d: d.update(schema="someone-else.format", schema_version=1))
    with pytest.raises(ArtifactError, match="not a dspy-ext prompt artifact: schema is 'someone-else.format'"):
        load(artifact_file)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda d: d["predictors"]["self"]["messages"][1].update(content=3),
            r"predictors\.self\.messages\[1\]\.content: expected a string, got a number",
        ),
        (
            lambda d: d["predictors"]["self"].update(demos={}),
            r"predictors\.self\.demos: expected a list, got an object",
        ),
        (
            lambda d: d["predictors"]["self"]["output_fields"][0].update(type="complex"),
            r"predictors\.self\.output_fields\[0\]\.type: bad type",
        ),
        (
            lambda d: d["predictors"]["self"]["messages"][0].update(role="robot"),
            r"predictors\.self\.messages\[0\]\.role: expected one of",
        ),
        (lambda d: d["metadata"].update(seed="zero"), r"metadata\.seed: expected an integer or null, got a string"),
        (lambda d: d["metadata"].update(dev_score=True), r"metadata\.dev_score: expected a number or null"),
        (lambda d: d.update(predictors=[]), r"predictors: expected an object, got a list"),
        (lambda d: d["predictors"]["self"]["parse"].update(format="json"), r"parse\.format: ChatAdapter replies"),
        (
            lambda d: d["predictors"]["self"]["messages"][-1].update(content="no placeholder"),
            r"no placeholder for input field\(s\) \['input'\]",
        ),
        (
            lambda d: d["predictors"]["self"]["messages"][-1].update(content="⟦input:other⟧"),
            r"placeholder '⟦input:other⟧' names no input field",
        ),
    ],
)
def test_wrong_types_name_the_key_path(artifact_file: Path, change, message: str) -> None:
    _rewrite(artifact_file, change)  # re-hashed: the shape check alone must catch it
    with pytest.raises(ArtifactError, match=message):
        load(artifact_file)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("lm"), r"\(top level\): missing key 'lm'"),
        (lambda d: d["predictors"]["self"].pop("instructions"), r"predictors\.self: missing key 'instructions'"),
        (lambda d: d["metadata"].pop("created_at"), r"metadata: missing key 'created_at'"),
        (
            lambda d: d["predictors"]["self"]["input_fields"][0].pop("type"),
            r"predictors\.self\.input_fields\[0\]: missing key 'type'",
        ),
        (lambda d: d.update(extra=1), r"\(top level\): unexpected key 'extra'"),
        (lambda d: d.pop("schema"), r"no 'schema' key"),
    ],
)
def test_missing_keys(artifact_file: Path, change, message: str) -> None:
    _rewrite(artifact_file, change)
    with pytest.raises(ArtifactError, match=message):
        load(artifact_file)


def test_nan_is_refused(artifact_file: Path) -> None:
    text = artifact_file.read_text(encoding="utf-8").replace('"dev_score": null', '"dev_score": NaN')
    artifact_file.write_text(text, encoding="utf-8")
    with pytest.raises(ArtifactError, match="NaN"):
        load(artifact_file)


def test_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ArtifactError, match="expected a JSON object, got a list"):
        load(path)


# --- render -----------------------------------------------------------------------------------


def test_render_input_errors() -> None:
    art = build_artifact(_sentiment_program(), adapter=dspy.ChatAdapter())
    with pytest.raises(RenderError, match=r"missing input\(s\) \['input'\]"):
        art.render("self")
    with pytest.raises(RenderError, match=r"unexpected input\(s\) \['extra'\]"):
        art.render("self", input="x", extra="y")
    with pytest.raises(RenderError, match="unsupported value type"):
        art.render("self", input=object())
    with pytest.raises(KeyError, match="no predictor 'nope'"):
        art.render("nope", input="x")


def test_plain_adapter_refuses_none_inputs() -> None:
    art = build_artifact(_sentiment_program(), adapter=PlainAdapter())
    with pytest.raises(RenderError, match="PlainAdapter leaves None inputs out"):
        art.render("self", input=None)


def test_substitution_is_single_pass() -> None:
    program = dspy.Predict("a, b -> c")
    art = build_artifact(program, adapter=dspy.ChatAdapter())
    inputs = {"a": "mentions ⟦input:b⟧ literally", "b": "B"}
    assert art.render("self", **inputs) == dspy.ChatAdapter().format(program.signature, [], inputs)


def test_text_view_shows_placeholders() -> None:
    text = build_artifact(_sentiment_program(), adapter=PlainAdapter()).text("self")
    assert text.startswith("===== system =====\nSay {positive} or {{negative}}.")
    assert "Input: ⟦input:input⟧" in text


# --- importable without DSPy ------------------------------------------------------------------


def test_runtime_runs_with_dspy_blocked(tmp_path: Path) -> None:
    artifact = tmp_path / "a.json"
    export(_sentiment_program(), artifact, adapter=dspy.ChatAdapter())
    expected_messages = dspy.ChatAdapter().format(
        _sentiment_program().signature, _sentiment_program().demos, {"input": "so {good}"}
    )
    vendored = tmp_path / "vendor" / "prompt_runtime.py"
    vendored.parent.mkdir()
    shutil.copy(RUNTIME_FILE, vendored)  # a service copies the one file
    script = textwrap.dedent(
        """
        import importlib.abc, importlib.util, json, sys

        BLOCKED = ("dspy", "dspy_ext", "pydantic", "json_repair", "litellm")

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked import of {name}")
                return None

        sys.meta_path.insert(0, Block())
        try:
            import dspy  # noqa: F401
            raise SystemExit("dspy was importable")
        except ImportError:
            pass
        spec = importlib.util.spec_from_file_location("prompt_runtime", sys.argv[1])
        module = importlib.util.module_from_spec(spec)
        sys.modules["prompt_runtime"] = module
        spec.loader.exec_module(module)
        art = module.load(sys.argv[2])
        print(json.dumps({
            "messages": art.render("self", input="so {good}"),
            "parsed": art.parse("self", "[[ ## output ## ]]\\npositive\\n\\n[[ ## completed ## ]]"),
            "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
        }))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(vendored), str(artifact)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["loaded"] == []
    assert out["messages"] == expected_messages
    assert out["parsed"] == {"output": "positive"}


def test_runtime_source_uses_no_unsafe_builtins() -> None:
    source = RUNTIME_FILE.read_text(encoding="utf-8")
    for word in ("import pickle", "eval(", "exec(", ".format(", "import dspy", "from dspy", "literal_eval"):
        assert word not in source, word
