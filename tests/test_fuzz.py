"""Fuzzing the front door: every reader of user files or settings, with random and adversarial input.

Each entry point has one ``check_*`` function stating its contract: for any
input it either returns a correct result or raises its documented exception
type with a clean one-line message; never another exception, never a hang
(Hypothesis' per-example ``deadline``), never a partial write. One ``test_*``
per entry point feeds it generated input. To fuzz a new reader, add a
``check_*`` function and a ``@given`` test next to the others.

The runs are derandomized (the same cases on every run, as CI needs) and keep
no example database in the repository.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dspy_ext import runtime
from dspy_ext.adapters import PlainAdapter
from dspy_ext.data import DataError, load_examples, load_task
from dspy_ext.export.exporter import build_artifact
from dspy_ext.lm import FakeEngine
from dspy_ext.registry import REGISTRY, OptimizerConfig, resolve_config

EXAMPLES = 500
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=5000,  # ms per case: a hang fails the test (generous: the CI machine may be shared)
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

REQUIRED = ("input", "output")


# ---- shared helpers ------------------------------------------------------------------------------


def assert_clean(exc: BaseException, expected: type[BaseException] | tuple[type[BaseException], ...]) -> None:
    """The error is of the documented type and reads as one non-empty line."""
    assert isinstance(exc, expected), f"{type(exc).__name__} is not {expected}: {exc}"
    message = str(exc)
    assert message.strip(), f"empty message from {type(exc).__name__}"
    assert len(message.splitlines()) == 1, f"multi-line message: {message!r}"


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per generated case (pytest's tmp_path is per test, not per case)."""
    with tempfile.TemporaryDirectory(prefix="dspy-ext-fuzz-") as folder:
        yield Path(folder)


@pytest.fixture(scope="module", autouse=True)
def private_datasets_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the Hugging Face datasets cache of thousands of generated files out of ~/.cache."""
    import datasets

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets"))
        folder = tmp_path_factory.mktemp("warm")
        # The first load of each format imports its readers (seconds): not a hang, so done up front.
        (folder / "warm.jsonl").write_text('{"input": "a", "output": "b"}\n')
        (folder / "warm.csv").write_text("input,output\na,b\n")
        (folder / "warm.parquet").write_bytes(parquet_bytes({"input": ["a"], "output": ["b"]}))
        for name in ("warm.jsonl", "warm.csv", "warm.parquet"):
            load_examples(folder / name)
        yield


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
# Text that JSON lines and CSV readers handle differently from Python: separators, BOMs, controls.
tricky_text = st.text(
    alphabet=st.sampled_from(
        list("ab ,\"'\n\r\t\\{}[]:") + ["\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x85", "\ufeff", "\x00", "é", "😀"]
    ),
    max_size=12,
)
cell_text = st.text(max_size=10) | tricky_text
column_names = st.sampled_from(["input", "output", "accepted", "extra", "", "Input", " input"]) | st.text(max_size=5)


def rows_strategy(values: st.SearchStrategy = cell_text) -> st.SearchStrategy[list[dict[str, Any]]]:
    """Mostly well-formed rows (both required columns) with some missing, null or odd columns."""
    row = st.fixed_dictionaries(
        {"input": values, "output": values},
        optional={"accepted": st.lists(st.text(max_size=5), max_size=2), "extra": json_values},
    )
    odd = st.dictionaries(column_names, values | json_values, max_size=4)
    return st.lists(row | odd, min_size=0, max_size=6)


def check_examples_result(examples: list[dspy.Example]) -> None:
    assert examples, "a loader returned no examples without raising"
    for example in examples:
        assert isinstance(example, dspy.Example)
        for key in REQUIRED:
            value = example.get(key)
            assert value is not None and not (isinstance(value, float) and math.isnan(value))
        assert set(example.inputs().keys()) == {"input"}


# ---- data loaders ----------------------------------------------------------------------------------


def expected_jsonl_rows(data: bytes) -> list[dict[str, Any]] | None:
    """The rows a JSON-lines file holds, or ``None`` when it is not a valid data file."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    rows = []
    for line in text.split("\n"):  # JSON lines are separated by \n only (\r is whitespace to JSON)
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            return None
        if not isinstance(row, dict) or any(row.get(k) is None for k in REQUIRED):
            return None
        rows.append(row)
    return rows or None


def check_jsonl(data: bytes) -> None:
    """``load_examples`` on a ``.jsonl`` file: DataError, or exactly the file's rows."""
    expected = expected_jsonl_rows(data)
    with scratch() as folder:
        path = folder / "data.jsonl"
        path.write_bytes(data)
        try:
            examples = load_examples(path)
        except DataError as exc:
            assert_clean(exc, DataError)
            # A file Python reads as valid may still be refused by Arrow (e.g. a column that is a
            # string in one row and a number in another): only invalid files must always fail.
            return
    assert expected is not None, f"accepted an invalid file: {data!r}"
    check_examples_result(examples)
    assert len(examples) == len(expected)
    for example, row in zip(examples, expected, strict=True):
        for key in REQUIRED:
            if isinstance(row[key], str):
                assert example[key] == row[key]


def jsonl_files() -> st.SearchStrategy[bytes]:
    def encode(rows: list[dict[str, Any]], ascii_only: bool, newline: str, blank: bool) -> bytes:
        lines = [json.dumps(r, ensure_ascii=ascii_only) for r in rows]
        if blank:
            lines.insert(len(lines) // 2, "   ")
        return newline.join(lines).encode("utf-8")

    well_formed = st.builds(encode, rows_strategy(), st.booleans(), st.sampled_from(["\n", "\r\n"]), st.booleans())
    truncated = st.builds(lambda data, cut: data[: max(0, len(data) - cut)], well_formed, st.integers(0, 40))
    return st.one_of(
        well_formed,
        truncated,
        st.binary(max_size=200),
        st.builds(lambda a, b: a + b, well_formed, st.binary(max_size=20)),
    )


@FUZZ
@given(jsonl_files())
def test_fuzz_jsonl_loader(data: bytes) -> None:
    check_jsonl(data)


def check_csv(data: bytes) -> None:
    """``load_examples`` on a ``.csv`` file: DataError, or text examples with every required cell set."""
    with scratch() as folder:
        path = folder / "data.csv"
        path.write_bytes(data)
        try:
            examples = load_examples(path)
        except DataError as exc:
            assert_clean(exc, DataError)
            return
    check_examples_result(examples)
    for example in examples:
        assert all(isinstance(example[k], str) for k in REQUIRED)  # CSV values stay text
    assert len(examples) <= data.count(b"\n") + data.count(b"\r") + 1


def csv_files() -> st.SearchStrategy[bytes]:
    def encode(header: list[str], rows: list[list[str]], newline: str) -> bytes:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator=newline)
        writer.writerow(header)
        writer.writerows(rows)
        return buffer.getvalue().encode("utf-8")

    header = st.lists(column_names, min_size=0, max_size=4) | st.just(["input", "output"])
    rows = st.lists(st.lists(cell_text, max_size=4), max_size=5)
    written = st.builds(encode, header, rows, st.sampled_from(["\n", "\r\n"]))
    return st.one_of(
        written,
        st.binary(max_size=200),
        st.builds(lambda data, cut: data[: max(0, len(data) - cut)], written, st.integers(0, 20)),
    )


@FUZZ
@given(csv_files())
def test_fuzz_csv_loader(data: bytes) -> None:
    check_csv(data)


def parquet_bytes(columns: dict[str, list[Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def check_parquet(data: bytes) -> None:
    """``load_examples`` on a ``.parquet`` file: DataError, or examples with every required value set."""
    with scratch() as folder:
        path = folder / "data.parquet"
        path.write_bytes(data)
        try:
            examples = load_examples(path)
        except DataError as exc:
            assert_clean(exc, DataError)
            return
    check_examples_result(examples)


def parquet_files() -> st.SearchStrategy[bytes]:
    column = st.one_of(
        st.lists(st.text(max_size=6) | st.none(), min_size=1, max_size=4),
        st.lists(st.integers(-5, 5), min_size=1, max_size=4),
        st.lists(st.lists(st.integers(0, 3), max_size=2), min_size=1, max_size=4),
    )

    @st.composite
    def tables(draw: st.DrawFn) -> bytes:
        names = draw(
            st.lists(
                st.sampled_from(["input", "output", "accepted", "extra"]) | st.text(max_size=4),
                min_size=1,
                max_size=3,
                unique=True,
            )
        )
        length = draw(st.integers(0, 4))
        columns = {}
        for name in names:
            values = draw(column)
            columns[name] = (values * (length + 1))[:length]
        return parquet_bytes(columns)

    valid = tables()
    return st.one_of(
        valid,
        st.binary(max_size=200),
        st.builds(lambda b: b"PAR1" + b + b"PAR1", st.binary(max_size=60)),
        st.builds(lambda data, cut: data[: max(0, len(data) - cut)], valid, st.integers(1, 60)),
    )


@FUZZ
@given(parquet_files())
def test_fuzz_parquet_loader(data: bytes) -> None:
    check_parquet(data)


FOLDER_FILES = ("train.jsonl", "test.jsonl", "instructions.json")


def check_folder(layout: dict[str, bytes | None]) -> None:
    """``load_task(data=folder)``: DataError/ValueError, or a task with train and test examples."""
    with scratch() as folder:
        for name, content in layout.items():
            if content is None:
                (folder / name).mkdir()  # a folder where a file is expected
            else:
                (folder / name).write_bytes(content)
        try:
            task = load_task(data=folder)
        except (DataError, ValueError) as exc:
            assert_clean(exc, (DataError, ValueError))
            return
    check_examples_result(task.train)
    check_examples_result(task.test)
    assert all(isinstance(i, str) and i == i.strip() and i for i in task.instructions)


def folder_layouts() -> st.SearchStrategy[dict[str, bytes | None]]:
    instructions = st.one_of(
        st.builds(lambda v: json.dumps(v).encode(), st.lists(st.text(max_size=8), max_size=3) | json_values),
        st.binary(max_size=40),
    )
    content = {"train.jsonl": jsonl_files(), "test.jsonl": jsonl_files(), "instructions.json": instructions}
    return st.dictionaries(st.sampled_from(FOLDER_FILES), st.none(), max_size=3).flatmap(
        lambda names: st.fixed_dictionaries({name: (st.none() | content[name]) for name in names})
    )


@FUZZ
@given(folder_layouts())
def test_fuzz_task_folder_loader(layout: dict[str, bytes | None]) -> None:
    check_folder(layout)


# ---- optimizer --config ----------------------------------------------------------------------------


def check_config(name: str, config: Any) -> None:
    """``resolve_config``: ValueError, or a validated config that survives a JSON round trip."""
    try:
        resolved = resolve_config(name, config)
    except ValueError as exc:
        assert_clean(exc, ValueError)
        return
    assert isinstance(resolved, OptimizerConfig) and name in REGISTRY
    dumped = resolved.model_dump()
    assert resolve_config(name, json.loads(json.dumps(dumped))) == resolved


def config_fields() -> list[str]:
    return sorted({field for spec in REGISTRY.values() for field in spec.config_model.model_fields})


config_values = (
    st.none()
    | st.booleans()
    | st.integers(-3, 10**6)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
    | st.sampled_from(["light", "medium", "heavy", "10", "0.5"])
    | json_values
)
optimizer_names = st.sampled_from(sorted(REGISTRY)) | st.text(max_size=8)


@FUZZ
@given(
    optimizer_names,
    st.dictionaries(st.sampled_from(config_fields()) | st.text(max_size=6), config_values, max_size=4) | json_values,
)
def test_fuzz_optimizer_config(name: str, config: Any) -> None:
    check_config(name, config)


def check_config_json(name: str, text: str) -> None:
    """``--config`` as the user types it: JSON text, parsed then validated; a ValueError either way."""
    try:
        parsed = json.loads(text)
    except ValueError as exc:  # json.JSONDecodeError
        assert_clean(exc, ValueError)
        return
    check_config(name, parsed)


@FUZZ
@given(
    optimizer_names,
    st.one_of(
        st.text(max_size=40),
        st.builds(json.dumps, st.dictionaries(st.sampled_from(config_fields()), config_values, max_size=3)),
        st.builds(
            lambda v: json.dumps(v)[:-1],
            st.dictionaries(st.sampled_from(config_fields()), config_values, min_size=1, max_size=3),
        ),
        st.builds(json.dumps, json_values),
    ),
)
def test_fuzz_optimizer_config_json(name: str, text: str) -> None:
    check_config_json(name, text)


# ---- the runtime's artifact loader ---------------------------------------------------------------------


def _artifacts() -> list[dict[str, Any]]:
    lm = dspy.LM("fake/fuzz-artifact-v1", engine=FakeEngine(lambda m: "ok", context_window=2048), cache=False)
    plain = dspy.Predict(dspy.Signature("input -> output", "Answer {the} request."))
    plain.demos = [dspy.Example(input="a ⟦x⟧", output="b")]
    chat = dspy.Predict(dspy.Signature("question, context: list[str] -> answer: int", "Count."))
    return [
        build_artifact(plain, adapter=PlainAdapter(), lm=lm).data,
        build_artifact(chat, adapter=dspy.ChatAdapter(), lm=lm).data,
    ]


ARTIFACTS = _artifacts()


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON value."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, prefix + (index,))
    return found


@st.composite
def mutated_artifacts(draw: st.DrawFn) -> bytes:
    data = copy.deepcopy(draw(st.sampled_from(ARTIFACTS)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths(data)[1:]))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(json_values)
        else:
            parent[path[-1]] = draw(json_values | tricky_text | st.sampled_from(["⟦input:input⟧", "⟦input:nope⟧"]))
    if draw(st.booleans()) or draw(st.booleans()):  # mostly re-hashed, so validation looks deeper
        with contextlib.suppress(ValueError, TypeError):
            data["content_hash"] = runtime.compute_hash(data)
    text = json.dumps(data, ensure_ascii=draw(st.booleans()))
    cut = draw(st.integers(0, 3))
    return text.encode("utf-8")[: len(text) - cut] if cut else text.encode("utf-8")


def check_artifact(data: bytes, as_file: bool) -> None:
    """``runtime.loads``/``load``: ArtifactError, or an artifact whose predictors render and parse cleanly."""
    with scratch() as folder:
        try:
            if as_file:
                (folder / "prompt.json").write_bytes(data)
                art = runtime.load(folder / "prompt.json")
            else:
                art = runtime.loads(data)
        except runtime.ArtifactError as exc:
            assert_clean(exc, runtime.ArtifactError)
            return
    assert art.names
    for name in art.names:
        inputs = {field: "some text" for field in art.input_names(name)}
        try:
            messages = art.render(name, **inputs)
        except runtime.RenderError as exc:
            assert_clean(exc, runtime.RenderError)
            continue
        assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in messages)
        for reply in ("positive", "[[ ## answer ## ]]\n3\n\n[[ ## completed ## ]]", '{"answer": 3}', ""):
            with contextlib.suppress(runtime.ParseError):
                art.parse(name, reply)


@FUZZ
@given(
    st.one_of(mutated_artifacts(), st.binary(max_size=200), st.builds(lambda v: json.dumps(v).encode(), json_values)),
    st.booleans(),
)
def test_fuzz_runtime_artifact_loader(data: bytes, as_file: bool) -> None:
    check_artifact(data, as_file)


# ---- later entry points: run files (experiment layer) and the review store's import ---------------------


def check_run_file(suffix: str, data: bytes) -> None:
    """``read_run_file`` then ``RunSettings.load``: SettingsError, or a mapping / valid settings."""
    from dspy_ext.experiment.settings import RunSettings, SettingsError, read_run_file

    with scratch() as folder:
        path = folder / f"run{suffix}"
        path.write_bytes(data)
        try:
            raw = read_run_file(path)
        except SettingsError as exc:
            assert_clean(exc, SettingsError)
            return
        assert isinstance(raw, dict)
        try:
            loaded = RunSettings.load(path)
        except (SettingsError, ValueError) as exc:
            assert_clean(exc, (SettingsError, ValueError))
            return
        assert isinstance(loaded, RunSettings)


def run_files() -> st.SearchStrategy[tuple[str, bytes]]:
    mapping = st.dictionaries(
        st.sampled_from(["task", "data", "optimizer", "budget", "seed", "optimizer_config", "out", "lm"])
        | st.text(max_size=5),
        config_values,
        max_size=4,
    )
    as_json = st.builds(lambda v: json.dumps(v).encode(), mapping | json_values)
    as_yaml = st.builds(lambda v: "\n".join(f"{k}: {json.dumps(x)}" for k, x in v.items()).encode(), mapping)
    return st.tuples(
        st.sampled_from([".json", ".yaml", ".yml", ".toml", ".txt"]),
        st.one_of(as_json, as_yaml, st.binary(max_size=120), st.text(max_size=60).map(str.encode)),
    )


@FUZZ
@given(run_files())
def test_fuzz_run_files(case: tuple[str, bytes]) -> None:
    pytest.importorskip("dspy_ext.experiment.settings")
    check_run_file(*case)


def _store_rows(path: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return [(t, conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]) for t in tables]


def check_review_import(data: bytes) -> None:
    """``ReviewStore.import_jsonl``: ReviewError with the store unchanged, or a summary of what was added."""
    from dspy_ext.review.store import ReviewError, ReviewStore

    with scratch() as folder:
        store = ReviewStore(folder / "review.sqlite")
        try:
            store.add_output({"input": "seed"}, {"output": "row"}, prompt_version="v1", sample_index=0)
            before = _store_rows(store.path)
            (folder / "labels.jsonl").write_bytes(data)
            try:
                summary = store.import_jsonl(folder / "labels.jsonl")
            except ReviewError as exc:
                assert_clean(exc, ReviewError)
                assert _store_rows(store.path) == before, "a refused import changed the store"
                return
            assert summary.rows >= 0
        finally:
            store.close()


def label_files() -> st.SearchStrategy[bytes]:
    row = st.fixed_dictionaries(
        {
            "input": st.fixed_dictionaries({"input": cell_text}) | json_values,
            "output": st.fixed_dictionaries({"output": cell_text}) | json_values,
        },
        optional={
            "grade": st.sampled_from(["good", "bad", None, "meh", 1]),
            "reason": st.none() | cell_text,
            "criteria": json_values,
            "prompt_versions": json_values,
            "gold": json_values,
        },
    )
    lines = st.lists(row | json_values, max_size=4).map(lambda rows: "\n".join(json.dumps(r) for r in rows).encode())
    return st.one_of(lines, st.binary(max_size=120))


@FUZZ
@given(label_files())
def test_fuzz_review_store_import(data: bytes) -> None:
    pytest.importorskip("dspy_ext.review.store")
    check_review_import(data)


def test_every_entry_point_has_a_fuzz_test() -> None:
    """The module contract: one check_* and one test_fuzz_* per entry point, each run EXAMPLES times."""
    names = globals()
    checks = sorted(n for n in names if n.startswith("check_") and n not in ("check_examples_result",))
    tests = sorted(n for n in names if n.startswith("test_fuzz_"))
    assert len(tests) >= len(checks) - 1  # check_config is shared by the two --config tests
    for test in tests:
        assert names[test].hypothesis.inner_test is not None
        assert names[test]._hypothesis_internal_use_settings.max_examples >= 500


@pytest.mark.parametrize("case", [(".yaml", b"0:"), (".yaml", b"1: 2\ntask: sentiment"), (".toml", b"task = 'x'")])
def test_run_files_the_fuzzer_found(case: tuple[str, bytes]) -> None:
    """Cases the fuzzer found once: a YAML key that is not text is a SettingsError that says so."""
    check_run_file(*case)
