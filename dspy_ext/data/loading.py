"""Load labeled examples from local files (or the Hugging Face Hub) as ``dspy.Example``.

Local ``.jsonl``, ``.json``, ``.csv`` and ``.parquet`` files become a Hugging Face
``datasets.Dataset`` built in memory (Arrow columns, nothing downloaded, no progress bar,
no global ``datasets`` setting touched). JSON and JSON-lines files are parsed here line by
line, so that an error names the line; CSV cells are read as text ("007" stays "007").
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dspy

from dspy_ext.data.splits import Split

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_INPUT_KEYS",
    "DEFAULT_OUTPUT_KEYS",
    "SUPPORTED_EXTENSIONS",
    "DataError",
    "dataset_fingerprint",
    "load_examples",
    "split_train_val",
]

DEFAULT_INPUT_KEYS: tuple[str, ...] = ("input",)
DEFAULT_OUTPUT_KEYS: tuple[str, ...] = ("output",)

#: File extension -> the format it is read as.
SUPPORTED_EXTENSIONS: dict[str, str] = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}

_HUB_NAME_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# Every character str.splitlines() breaks at, shown escaped: data (column names, values, file
# names, parser messages) must never split an error message over several lines.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(text: str) -> str:
    r"""``text`` with line breaks escaped (``"a\nb"`` -> ``"a\\nb"``), so that it prints as one line.

    Example:
        >>> one_line("columns found: in\nput")
        'columns found: in\\nput'
    """
    return text.translate(_LINE_BREAKS)


class DataError(ValueError):
    """A data file is missing, empty or malformed.

    The message names the file and, where it applies, the 1-based row or line.

    Args:
        source: The file (or data set name) the problem is in.
        message: What is wrong.
        line: 1-based line number in the file, if known.
        row: 1-based data row number, if known.
    """

    def __init__(self, source: str | Path, message: str, *, line: int | None = None, row: int | None = None) -> None:
        self.source = str(source)
        self.line = line
        self.row = row
        where = []
        if line is not None:
            where.append(f"line {line}")
        if row is not None and row != line:
            where.append(f"row {row}")
        location = f"{self.source}, {' / '.join(where)}" if where else self.source
        super().__init__(one_line(f"{location}: {message}"))


def _keys(keys: str | Sequence[str] | None, default: tuple[str, ...], what: str) -> tuple[str, ...]:
    """Normalise a key argument (a lone string is one key)."""
    if keys is None:
        return default
    names = (keys,) if isinstance(keys, str) else tuple(keys)
    if not names or not all(isinstance(k, str) and k for k in names):
        raise ValueError(f"{what} must be a non-empty sequence of non-empty strings, got {keys!r}")
    return names


def _is_missing(value: Any) -> bool:
    """True for ``None`` and NaN (what pandas/arrow use for an empty CSV cell)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _columns(row: Mapping[str, Any]) -> str:
    present = [k for k, v in row.items() if not _is_missing(v)]
    return ", ".join(present) if present else "(none)"


def _check_required(
    source: str | Path,
    row: Mapping[str, Any],
    required: Sequence[str],
    *,
    row_no: int,
    line_no: int | None = None,
) -> None:
    """Raise :class:`DataError` if a required column is absent or null in ``row``."""
    for key in required:
        if key not in row:
            raise DataError(
                source,
                f"missing required column {key!r}; columns found: {_columns(row)}",
                line=line_no,
                row=row_no,
            )
        if _is_missing(row[key]):
            raise DataError(
                source,
                f"required column {key!r} is empty (null); columns found: {_columns(row)}",
                line=line_no,
                row=row_no,
            )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"is not valid UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _json_lines_rows(path: Path, text: str, required: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of a JSON-lines text; every non-blank line must be a JSON object with the required columns."""
    rows: list[dict[str, Any]] = []
    # JSON lines are separated by \n only (\r is whitespace to JSON; str.splitlines would also break at \x0b ...).
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", line=line_no) from exc
        if not isinstance(value, dict):
            raise DataError(
                path,
                f"expected a JSON object per line, got {type(value).__name__}",
                line=line_no,
                row=len(rows) + 1,
            )
        _check_required(path, value, required, row_no=len(rows) + 1, line_no=line_no)
        rows.append(value)
    return rows


def _json_rows(path: Path, text: str, required: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of a ``.json`` file: a list of objects, or JSON lines under a .json name."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            # Several top-level values: the file is JSON lines named .json.
            return _json_lines_rows(path, text, required)
        raise DataError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from exc
    if isinstance(value, dict):
        # A single object is one JSON-lines row.
        return _json_lines_rows(path, text, required)
    if not isinstance(value, list):
        raise DataError(path, f"expected a JSON list of objects, got {type(value).__name__}")
    for row_no, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise DataError(path, f"expected a JSON object, got {type(item).__name__}", row=row_no)
        _check_required(path, item, required, row_no=row_no)
    return value


def _csv_header(path: Path) -> list[str]:
    """Read and check the CSV header; also make sure there is at least one data row."""
    text = _read_text(path)
    reader = csv.reader(text.splitlines())
    header: list[str] | None = None
    for record in reader:
        if not any(cell.strip() for cell in record):
            continue
        if header is None:
            header = [cell.strip() for cell in record]
            continue
        break
    else:
        if header is None:
            raise DataError(path, "is empty (no header row)")
        raise DataError(path, f"has a header ({', '.join(header)}) but no data rows")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates or any(not name for name in header):
        raise DataError(path, f"bad CSV header {header}: column names must be non-empty and unique", line=1)
    return header


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV file, every cell as text; an empty cell is a missing value."""
    with path.open(newline="", encoding="utf-8") as handle:
        return [{k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(handle)]


def _local_dataset(path: Path, builder: str, json_rows: list[dict[str, Any]]) -> Any:
    """``path`` as an in-memory ``datasets.Dataset`` (JSON rows parsed already, CSV here, Parquet by Arrow)."""
    import datasets

    if builder == "parquet":
        import pyarrow.parquet

        return datasets.Dataset(pyarrow.parquet.read_table(path))
    if builder == "csv":
        features = datasets.Features({name: datasets.Value("string") for name in _csv_header(path)})
        return datasets.Dataset.from_list(_csv_rows(path), features=features)
    return datasets.Dataset.from_list(json_rows)


def _load_local(path: Path, required: Sequence[str]) -> list[dict[str, Any]]:
    """Validate and load one local file; returns plain row dicts."""
    suffix = path.suffix.lower()
    builder = SUPPORTED_EXTENSIONS.get(suffix)
    if builder is None:
        valid = ", ".join(SUPPORTED_EXTENSIONS)
        raise DataError(path, f"unsupported file type {suffix or '(no extension)'!r}; supported: {valid}")
    if path.stat().st_size == 0:
        raise DataError(path, "is empty")
    rows: list[dict[str, Any]] = []
    if builder == "json":
        text = _read_text(path)
        if not text.strip():
            raise DataError(path, "is empty")
        rows = (_json_lines_rows if suffix == ".jsonl" else _json_rows)(path, text, required)
        if not rows:
            raise DataError(path, "has no rows")
    try:
        dataset = _local_dataset(path, builder, rows)
    except DataError:
        raise
    except Exception as exc:  # datasets/pyarrow raise many unrelated types
        raise DataError(path, f"could not be read ({type(exc).__name__}: {exc})") from exc
    return _rows_from_dataset(path, dataset, required)


def _rows_from_dataset(source: str | Path, dataset: Any, required: Sequence[str]) -> list[dict[str, Any]]:
    """Check required columns on a loaded ``datasets.Dataset`` and return its rows."""
    if len(dataset) == 0:
        raise DataError(source, "has no rows")
    columns = list(dataset.column_names)
    for key in required:
        if key not in columns:
            raise DataError(
                source,
                f"missing required column {key!r}; columns found: {', '.join(columns) or '(none)'}",
                row=1,
            )
    rows: list[dict[str, Any]] = []
    for row_no, row in enumerate(dataset, start=1):
        _check_required(source, row, required, row_no=row_no)
        # Arrow fills columns a row did not have with null; drop those so each
        # example keeps only its own optional fields (e.g. "accepted").
        rows.append({k: v for k, v in row.items() if k in required or not _is_missing(v)})
    return rows


def _load_hub(name: str, required: Sequence[str]) -> list[dict[str, Any]]:
    """Load the train split of a Hub data set, with an explicit offline error."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=Split.TRAIN.value)
    except Exception as exc:  # connection, auth, missing split ... all end here
        raise DataError(
            name,
            "is not a local file or folder, and loading it from the Hugging Face Hub failed "
            f"(the hub is unreachable/offline or the data set does not exist): {type(exc).__name__}: {exc}",
        ) from exc
    return _rows_from_dataset(name, dataset, required)


def load_examples(
    path: str | Path,
    *,
    input_keys: str | Sequence[str] | None = None,
    output_keys: str | Sequence[str] | None = None,
) -> list[dspy.Example]:
    """Load labeled examples from a file, or from the Hub by ``owner/name``.

    Every row must have non-null values for all input and output keys; other
    columns (e.g. ``accepted``) are kept on the examples.

    Args:
        path: A ``.jsonl``, ``.json`` (a list of objects, or JSON lines),
            ``.csv`` (all values read as text) or ``.parquet`` file. A path
            that does not exist but looks like ``owner/name`` is loaded from
            the Hugging Face Hub (train split).
        input_keys: Input column name(s); default ``("input",)``.
        output_keys: Output column name(s); default ``("output",)``.

    Returns:
        The examples, in file order, with ``.with_inputs(*input_keys)``.

    Raises:
        DataError: The file is missing, empty, of an unsupported type, has
            bad JSON, a non-object row, or a missing/null required column;
            or the Hub could not be reached.
        ValueError: Bad key arguments.

    Example:
        >>> examples = load_examples("train.jsonl")  # doctest: +SKIP
        >>> examples[0].inputs().keys()  # doctest: +SKIP
        ['input']
    """
    inputs = _keys(input_keys, DEFAULT_INPUT_KEYS, "input_keys")
    outputs = _keys(output_keys, DEFAULT_OUTPUT_KEYS, "output_keys")
    overlap = set(inputs) & set(outputs)
    if overlap:
        raise ValueError(f"keys cannot be both inputs and outputs: {sorted(overlap)}")
    required = (*inputs, *outputs)

    target = Path(path).expanduser()
    if target.is_file():
        rows = _load_local(target, required)
        source = str(target)
    elif target.is_dir():
        raise DataError(target, "is a folder; pass a data file (use load_task for a task folder)")
    elif isinstance(path, str) and _HUB_NAME_RE.match(path) and Path(path).suffix.lower() not in SUPPORTED_EXTENSIONS:
        logger.info("%s is not a local path; trying the Hugging Face Hub", path)
        rows = _load_hub(path, required)
        source = path
    else:
        raise DataError(target, "file not found")

    logger.debug("loaded %d examples from %s", len(rows), source)
    return [dspy.Example(row).with_inputs(*inputs) for row in rows]


def split_train_val(
    train: Sequence[dspy.Example],
    n_train: int | None,
    n_val: int | None,
    *,
    seed: int,
) -> tuple[list[dspy.Example], list[dspy.Example]]:
    """Draw disjoint train and validation subsets.

    The examples are shuffled with a private ``random.Random(seed)`` (the
    global random state is untouched); the first ``n_train`` go to train and
    the next ``n_val`` to validation. So the train subset for a seed does not
    depend on ``n_val``.

    Args:
        train: The examples to draw from (usually the task's training file).
        n_train: Train size, or ``None`` for all examples not used for validation.
        n_val: Validation size, or ``None`` for all examples not used for train.
        seed: Seed of the shuffle.

    Returns:
        ``(train_subset, val_subset)``.

    Raises:
        ValueError: Both sizes are ``None``, a size is negative, or
            ``n_train + n_val`` exceeds the number of examples (the message
            says how many there are).

    Example:
        >>> import dspy
        >>> pool = [dspy.Example(input=str(i), output=str(i)) for i in range(10)]
        >>> tr, va = split_train_val(pool, 6, None, seed=0)
        >>> len(tr), len(va)
        (6, 4)
    """
    available = len(train)
    if n_train is None and n_val is None:
        raise ValueError("give n_train or n_val (or both); None means 'the rest'")
    for label, size in (("n_train", n_train), ("n_val", n_val)):
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise ValueError(f"{label} must be a non-negative int or None, got {size!r}")
    requested = (n_train or 0) + (n_val or 0)
    if requested > available:
        raise ValueError(
            f"asked for {requested} examples (n_train={n_train}, n_val={n_val}), but only {available} are available"
        )
    if n_train is None:
        n_train = available - requested
    if n_val is None:
        n_val = available - n_train
    order = list(range(available))
    random.Random(seed).shuffle(order)
    train_part = [train[i] for i in order[:n_train]]
    val_part = [train[i] for i in order[n_train : n_train + n_val]]
    return train_part, val_part


def _canonical(example: Any) -> dict[str, Any]:
    if isinstance(example, dspy.Example):
        input_keys = getattr(example, "_input_keys", None)
        return {
            "fields": dict(example.items()),
            "inputs": sorted(input_keys) if input_keys is not None else None,
        }
    if isinstance(example, Mapping):
        return {"fields": dict(example), "inputs": None}
    raise TypeError(f"expected dspy.Example or a mapping, got {type(example).__name__}")


def default_valset(
    trainset: Sequence[Any], valset: Sequence[Any] | None, rng: random.Random, fraction: float = 0.4
) -> tuple[list[Any], list[Any]]:
    """``(trainset, valset)`` as given, or, without a valset, a seeded ``fraction`` of the trainset carved off.

    What an optimizer's ``compile(student, trainset=..., valset=None)`` does when it is given no valset.

    Args:
        trainset: The training examples.
        valset: The validation examples, or ``None``/empty to carve them from ``trainset``.
        rng: Shuffles a copy of ``trainset`` (only when a valset is carved).
        fraction: Share of ``trainset`` that becomes the valset (at least one example).

    Example:
        >>> train, val = default_valset(list(range(10)), None, random.Random(0))
        >>> len(train), len(val)
        (6, 4)
    """
    trainset = list(trainset)
    if valset:
        return trainset, list(valset)
    shuffled = list(trainset)
    rng.shuffle(shuffled)
    cut = max(1, int(len(shuffled) * fraction))
    return shuffled[cut:] or shuffled[:cut], shuffled[:cut]


def dataset_fingerprint(examples: Sequence[dspy.Example | Mapping[str, Any]]) -> str:
    """A stable sha256 of the examples (fields, input keys and order).

    The examples are serialised as canonical JSON (sorted keys, no spaces,
    UTF-8), so the digest is the same across runs and machines; DSPy's
    internal ``dspy_*`` fields are ignored.

    Args:
        examples: ``dspy.Example`` objects (or plain mappings).

    Returns:
        The hex digest.

    Example:
        >>> import dspy
        >>> fp = dataset_fingerprint([dspy.Example(input="a", output="b").with_inputs("input")])
        >>> len(fp)
        64
    """
    payload = json.dumps(
        [_canonical(ex) for ex in examples],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
