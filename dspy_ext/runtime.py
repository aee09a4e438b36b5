"""Run an exported dspy-ext prompt artifact without DSPy: load, render, parse.

This module uses the Python standard library only (3.10+). It does not import
DSPy or dspy-ext, so a production service can copy this one file and use it
on its own.

An artifact is a JSON file written by ``dspy_ext.export.export``. For each
predictor of a compiled program it holds the exact chat messages DSPy's
adapter would send, with every input value replaced by a placeholder
``⟦input:NAME⟧``, and the description of the reply format. This module:

* :func:`load` checks the schema name and version, the shape of every key and
  the content hash, and refuses anything else with an :class:`ArtifactError`
  whose message names the problem (and the key path, for shape errors);
* :meth:`PromptArtifact.render` formats input values the way DSPy's
  ``format_field_value`` does and puts them into the messages;
* :meth:`PromptArtifact.parse` reads a reply the way the adapter used at export
  does (DSPy's ChatAdapter ``[[ ## field ## ]]`` sections, DSPy's JSONAdapter
  JSON object, or dspy-ext's ``PlainAdapter`` lines) and coerces the values to
  the output field types (``str``, ``int``, ``float``, ``bool``, ``Literal``,
  ``list``, ``dict``, ``Optional``).

Placeholders are substituted in one pass with plain string operations (never
``str.format``), so braces in instructions, in JSON schemas or in input values
are left alone, and text inside an inserted value is never substituted again.

Nothing here uses ``pickle``, ``eval`` or ``exec``; the files are JSON only.

Example:
    >>> art = load("sentiment.prompt.json")                  # doctest: +SKIP
    >>> messages = art.render("predict", input="A fine film.")  # doctest: +SKIP
    >>> reply = my_chat_client(messages)                      # doctest: +SKIP
    >>> art.parse("predict", reply)                           # doctest: +SKIP
    {'output': 'positive'}
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "REQUIRED_METADATA_KEYS",
    "REPLY_FORMATS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "ArtifactError",
    "ContextOverflowError",
    "ParseError",
    "PlainReplyError",
    "PromptArtifact",
    "RenderError",
    "canonical_json",
    "check_context",
    "choose_label",
    "compute_hash",
    "context_overflow_message",
    "format_type",
    "format_value",
    "load",
    "loads",
    "parse_type",
    "parse_value",
    "placeholder",
    "split_plain_reply",
    "validate",
]

#: The ``schema`` value of every artifact.
SCHEMA = "dspy-ext.prompt-artifact"
#: The newest schema version this runtime reads.
SCHEMA_VERSION = 1
#: Metadata keys every artifact must carry (their values may be ``None``); others are allowed.
REQUIRED_METADATA_KEYS = (
    "dspy_version",
    "dspy_ext_version",
    "optimizer",
    "optimizer_settings",
    "seed",
    "data_hash",
    "dev_score",
    "test_score",
    "created_at",
)
#: Adapter name -> reply format (``parse.format``).
REPLY_FORMATS = {"ChatAdapter": "chat", "JSONAdapter": "json", "PlainAdapter": "plain"}

_PLACEHOLDER_OPEN = "\u27e6input:"  # ⟦input:
_PLACEHOLDER_CLOSE = "\u27e7"  # ⟧
_PLACEHOLDER_RE = re.compile("\u27e6input:([^\u27e7]*)\u27e7")
# DSPy turns user messages holding this marker into content blocks (images, files...).
_CUSTOM_TYPE_MARKER = "<<CUSTOM-TYPE-START-IDENTIFIER>>"
_ROLES = ("system", "user", "assistant")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


class ArtifactError(ValueError):
    """An artifact file is unreadable, of an unknown schema or version, malformed, or altered."""


class RenderError(ValueError):
    """Inputs given to :meth:`PromptArtifact.render` are missing, unexpected or of an unsupported type."""


def context_overflow_message(
    prompt_tokens: int, context_window: int, *, reply_tokens: int = 0, model: str | None = None
) -> str:
    """The one-line message of a prompt that does not fit a model's context window.

    dspy-ext's engines and evaluator use the same wording (error class
    ``context_overflow``), so a row that overflowed during optimization and a
    call refused by :func:`check_context` in production read alike.

    Args:
        prompt_tokens: Tokens of the rendered prompt.
        context_window: The model's context window in tokens.
        reply_tokens: Tokens kept free for the reply.
        model: The model's name, if known.

    Returns:
        The message.

    Example:
        >>> context_overflow_message(2301, 2048, model="smollm2")
        'context overflow: the prompt has 2301 tokens, 253 more than the context window of 2048 tokens of smollm2 allows; shorten the input or use fewer demos'
    """
    reserved = f" + {reply_tokens} reserved for the reply" if reply_tokens else ""
    over = prompt_tokens + reply_tokens - context_window
    of_model = f" of {model}" if model else ""
    return (
        f"context overflow: the prompt has {prompt_tokens} tokens{reserved}, {over} more than the context "
        f"window of {context_window} tokens{of_model} allows; shorten the input or use fewer demos"
    )


class ContextOverflowError(ValueError):
    """A rendered prompt does not fit the model's context window (see :func:`check_context`).

    Attributes:
        prompt_tokens: Tokens of the prompt.
        context_window: The context window in tokens.
        reply_tokens: Tokens that were kept free for the reply.
        model: The model's name, if known.
    """

    def __init__(
        self, prompt_tokens: int, context_window: int, *, reply_tokens: int = 0, model: str | None = None
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.context_window = context_window
        self.reply_tokens = reply_tokens
        self.model = model
        super().__init__(
            context_overflow_message(prompt_tokens, context_window, reply_tokens=reply_tokens, model=model)
        )


def check_context(
    messages: Sequence[Mapping[str, str]],
    count_tokens: Callable[[list[dict[str, str]]], int],
    context_window: int,
    *,
    reply_tokens: int = 0,
    model: str | None = None,
) -> int:
    """Count the prompt's tokens and refuse a prompt that does not fit the context window.

    Tokenizers and chat templates differ per model, so the count comes from
    the caller (e.g. the provider's tokenizer applied to the chat template).

    Args:
        messages: Rendered chat messages (e.g. from :meth:`PromptArtifact.render`).
        count_tokens: ``messages -> number of prompt tokens`` for your model.
        context_window: The model's context window in tokens.
        reply_tokens: Tokens to keep free for the reply (e.g. your ``max_tokens``).
        model: The model's name, for the message.

    Returns:
        The prompt's token count.

    Raises:
        ContextOverflowError: ``prompt tokens + reply_tokens > context_window``.
        ValueError: A bad ``context_window``/``reply_tokens``, or a counter that
            does not return a non-negative integer.

    Example:
        >>> words = lambda messages: sum(len(m["content"].split()) for m in messages)
        >>> check_context([{"role": "user", "content": "Input: a fine film"}], words, 2048)
        4
    """
    for label, value in (("context_window", context_window), ("reply_tokens", reply_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if label == "context_window" else 0):
            raise ValueError(
                f"{label} must be a {'positive' if label == 'context_window' else 'non-negative'} "
                f"integer, got {value!r}"
            )
    count = count_tokens([dict(m) for m in messages])
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count_tokens must return a non-negative integer, got {count!r}")
    if count + reply_tokens > context_window:
        raise ContextOverflowError(count, context_window, reply_tokens=reply_tokens, model=model)
    return count


class ParseError(ValueError):
    """A reply could not be read into the output fields.

    Attributes:
        predictor: The predictor name.
        adapter: The adapter whose reply format was expected.
        reply: The reply text.
    """

    def __init__(self, predictor: str, adapter: str, reply: str, message: str) -> None:
        self.predictor = predictor
        self.adapter = adapter
        self.reply = reply
        super().__init__(f"predictor {predictor!r} ({adapter}): {message}")


def placeholder(name: str) -> str:
    """The placeholder standing for input field ``name`` in the stored messages.

    Args:
        name: An input field name.

    Returns:
        ``"⟦input:NAME⟧"``.

    Example:
        >>> placeholder("question")
        '⟦input:question⟧'
    """
    return f"{_PLACEHOLDER_OPEN}{name}{_PLACEHOLDER_CLOSE}"


def canonical_json(value: Any, *, lenient: bool = False) -> str:
    """Deterministic JSON (sorted keys, no spaces, UTF-8 kept): the text the content hash is taken of.

    Args:
        value: A JSON value.
        lenient: Also write what JSON cannot hold: other objects as their ``str()``, NaN and
            infinities as ``NaN``/``Infinity``. For fingerprints of in-memory state, never for an
            artifact (whose hash refuses them).

    Returns:
        The canonical JSON text.

    Raises:
        TypeError: A value JSON cannot hold (unless ``lenient``).
        ValueError: NaN or an infinity (unless ``lenient``).

    Example:
        >>> canonical_json({"b": 1, "a": [1, "é"]})
        '{"a":[1,"é"],"b":1}'
    """
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=lenient,
        default=str if lenient else None,
    )


def compute_hash(data: Mapping[str, Any]) -> str:
    """The sha256 (hex) of the canonical JSON of ``data`` without its ``content_hash`` key.

    Args:
        data: The artifact as a dict.

    Returns:
        64 hex digits.

    Example:
        >>> len(compute_hash({"schema": SCHEMA}))
        64
    """
    body = {k: v for k, v in data.items() if k != "content_hash"}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# Types: a small grammar for field annotations.
#
#   type    := "str" | "int" | "float" | "bool" | "Any" | "None"
#            | "list" | "list[" type "]" | "dict" | "dict[str, " type "]"
#            | "Optional[" type "]" | "Literal[" json ("," json)* "]"
#
# Literal members are JSON strings, numbers, true/false or null. Parsed types are tuples:
# ("str",) ("int",) ("float",) ("bool",) ("any",) ("none",) ("list", T) ("dict", T)
# ("optional", T) ("literal", (member, ...)).
# ---------------------------------------------------------------------------------------------

_SIMPLE = {"str": ("str",), "int": ("int",), "float": ("float",), "bool": ("bool",), "Any": ("any",), "None": ("none",)}
_ANY = ("any",)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _TypeParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.decoder = json.JSONDecoder()

    def fail(self, message: str) -> ValueError:
        return ValueError(f"bad type {self.text!r} at character {self.pos}: {message}")

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] == " ":
            self.pos += 1

    def peek(self, char: str) -> bool:
        self.skip()
        return self.text.startswith(char, self.pos)

    def expect(self, char: str) -> None:
        if not self.peek(char):
            raise self.fail(f"expected {char!r}")
        self.pos += len(char)

    def parse(self) -> tuple:
        self.skip()
        match = _NAME.match(self.text, self.pos)
        if match is None:
            raise self.fail("expected a type name")
        name = match.group(0)
        self.pos = match.end()
        if name in _SIMPLE:
            return _SIMPLE[name]
        if name == "list":
            if not self.peek("["):
                return ("list", _ANY)
            self.expect("[")
            inner = self.parse()
            self.expect("]")
            return ("list", inner)
        if name == "dict":
            if not self.peek("["):
                return ("dict", _ANY)
            self.expect("[")
            key = self.parse()
            if key != ("str",):
                raise self.fail("dict keys must be str")
            self.expect(",")
            value = self.parse()
            self.expect("]")
            return ("dict", value)
        if name == "Optional":
            self.expect("[")
            inner = self.parse()
            self.expect("]")
            return ("optional", inner)
        if name == "Literal":
            self.expect("[")
            members = []
            while True:
                self.skip()
                try:
                    member, end = self.decoder.raw_decode(self.text, self.pos)
                except ValueError:
                    raise self.fail("expected a JSON literal member") from None
                if not (member is None or isinstance(member, (str, int, float, bool))):
                    raise self.fail("Literal members must be strings, numbers, booleans or null")
                members.append(member)
                self.pos = end
                if self.peek(","):
                    self.pos += 1
                    continue
                self.expect("]")
                break
            return ("literal", tuple(members))
        raise self.fail(f"unknown type name {name!r}")


def parse_type(text: str) -> tuple:
    """Parse a stored type string.

    Args:
        text: E.g. ``"str"``, ``"list[str]"``, ``'Literal["positive", "negative"]'``.

    Returns:
        The parsed type as a tuple, e.g. ``("list", ("str",))``.

    Raises:
        ValueError: The string does not follow the grammar (see the module source).
        TypeError: ``text`` is not a string.

    Example:
        >>> parse_type('Optional[Literal["a", 1]]')
        ('optional', ('literal', ('a', 1)))
    """
    if not isinstance(text, str):
        raise TypeError(f"a type must be a string, got {type(text).__name__}")
    parser = _TypeParser(text)
    parsed = parser.parse()
    parser.skip()
    if parser.pos != len(text):
        raise parser.fail("unexpected text after the type")
    return parsed


def format_type(parsed: tuple) -> str:
    """The canonical type string of a parsed type (the inverse of :func:`parse_type`).

    Args:
        parsed: A tuple as returned by :func:`parse_type`.

    Returns:
        The type string.

    Example:
        >>> format_type(("dict", ("list", ("int",))))
        'dict[str, list[int]]'
    """
    kind = parsed[0]
    names = {"str": "str", "int": "int", "float": "float", "bool": "bool", "any": "Any", "none": "None"}
    if kind in names:
        return names[kind]
    if kind == "list":
        return f"list[{format_type(parsed[1])}]"
    if kind == "dict":
        return f"dict[str, {format_type(parsed[1])}]"
    if kind == "optional":
        return f"Optional[{format_type(parsed[1])}]"
    if kind == "literal":
        return "Literal[" + ", ".join(json.dumps(m, ensure_ascii=False) for m in parsed[1]) + "]"
    raise ValueError(f"unknown parsed type {parsed!r}")


def _as_type(type_: str | tuple) -> tuple:
    return parse_type(type_) if isinstance(type_, str) else type_


# ---------------------------------------------------------------------------------------------
# Rendering values (mirrors dspy.adapters.utils.format_field_value).
# ---------------------------------------------------------------------------------------------


def _jsonable(value: Any, nested: bool) -> Any:
    """What pydantic's ``dump_python(mode="json")`` gives for plain Python data."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        # pydantic writes non-finite floats inside containers as null; a bare one stays a float.
        return None if nested and not math.isfinite(value) else value
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, True) for item in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, (str, int, float)):
                raise TypeError(f"dict keys must be str, int or float, got {type(key).__name__}")
            out[str(key)] = _jsonable(item, True)
        return out
    raise TypeError(
        f"unsupported value type {type(value).__name__}; use str, int, float, bool, None, list, tuple or dict"
    )


def _format_blob(blob: str) -> str:
    if "\n" not in blob and "\u00ab" not in blob and "\u00bb" not in blob:
        return f"\u00ab{blob}\u00bb"
    return "\u00ab\u00ab\u00ab\n    " + blob.replace("\n", "\n    ") + "\n\u00bb\u00bb\u00bb"


def format_value(value: Any, type_: str | tuple) -> str:
    """Format an input value the way DSPy's ``format_field_value`` does.

    A list given to a ``str`` field becomes a numbered list of ``«item»``
    blobs (``N/A`` when empty); other lists, tuples and dicts become JSON
    (``ensure_ascii=False``); everything else is ``str(value)``.

    Args:
        value: ``str``, ``int``, ``float``, ``bool``, ``None``, or a list,
            tuple or dict of those.
        type_: The field's type string (or parsed type).

    Returns:
        The text DSPy would put into the prompt.

    Raises:
        TypeError: An unsupported value type (or a non-string item in a list
            given to a ``str`` field).

    Example:
        >>> format_value(["a", "b"], "str")
        '[1] «a»\\n[2] «b»'
        >>> format_value({"k": [1, 2]}, "dict[str, list[int]]")
        '{"k": [1, 2]}'
    """
    parsed = _as_type(type_)
    if isinstance(value, list) and parsed == ("str",):
        if not value:
            return "N/A"
        for item in value:
            if not isinstance(item, str):
                raise TypeError(f"a list given to a str field must hold strings, got {type(item).__name__}")
        if len(value) == 1:
            return _format_blob(value[0])
        return "\n".join(f"[{i + 1}] {_format_blob(item)}" for i, item in enumerate(value))
    data = _jsonable(value, False)
    if isinstance(data, (dict, list)):
        return json.dumps(data, ensure_ascii=False)
    return str(data)


# ---------------------------------------------------------------------------------------------
# Reading values (mirrors dspy.adapters.utils.parse_value with pydantic's lax coercion).
# ---------------------------------------------------------------------------------------------

_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}
_INT_TEXT = re.compile(r"[+-]?\d+(?:\.0*)?\Z")
_PY_CONSTANTS = {"True": True, "False": False, "None": None}


def _literal_member(value: Any, members: Sequence[Any]) -> tuple[bool, Any]:
    """pydantic's Literal check: same kind of value (1.0 may match 1, but True never matches 1)."""
    for member in members:
        strict = any(isinstance(v, (bool, str)) or v is None for v in (member, value))
        if strict and type(member) is type(value) and member == value:
            return True, member
        if not strict and member == value:
            return True, member
    return False, None


def _coerce(value: Any, parsed: tuple) -> Any:
    """Validate ``value`` (already decoded) against a parsed type, with lax coercion."""
    kind = parsed[0]
    if kind == "any":
        return value
    if kind == "none":
        if value is None:
            return None
        raise ValueError(f"expected null, got {value!r}")
    if kind == "optional":
        return None if value is None else _coerce(value, parsed[1])
    if kind == "str":
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {type(value).__name__}")
    if kind == "int":
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str) and _INT_TEXT.match(value.strip()):
            return int(value.strip().split(".")[0])
        raise ValueError(f"expected an integer, got {value!r}")
    if kind == "float":
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            low = value.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
        raise ValueError(f"expected a boolean, got {value!r}")
    if kind == "literal":
        found, member = _literal_member(value, parsed[1])
        if found:
            return member
        raise ValueError(f"expected one of {list(parsed[1])!r}, got {value!r}")
    if kind == "list":
        if isinstance(value, (list, tuple)):
            return [_coerce(item, parsed[1]) for item in value]
        raise ValueError(f"expected a list, got {type(value).__name__}")
    if kind == "dict":
        if isinstance(value, dict):
            return {_coerce(k, ("str",)): _coerce(v, parsed[1]) for k, v in value.items()}
        raise ValueError(f"expected an object, got {type(value).__name__}")
    raise ValueError(f"unknown type {parsed!r}")


def _lenient_loads(text: str) -> Any:
    """Decode ``text`` as JSON (or a Python constant); the text itself when it is neither."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    stripped = text.strip()
    if stripped in _PY_CONSTANTS:
        return _PY_CONSTANTS[stripped]
    return text


def parse_value(value: Any, type_: str | tuple) -> Any:
    """Read one output value the way DSPy's ``parse_value`` does, for the supported types.

    ``str`` fields take ``str(value)``. For a ``Literal`` an exact member wins,
    then the text without surrounding quotes or a ``Literal[...]`` wrapper.
    Text for other types is decoded as JSON first (``"42"`` -> 42,
    ``"[1, 2]"`` -> [1, 2], ``"True"`` -> True) and then checked against the
    type with pydantic-style lax coercion (``"3"`` -> 3 for ``int``,
    ``"yes"`` -> True for ``bool``).

    Args:
        value: Text from a reply, or a value decoded from a JSON reply.
        type_: The field's type string (or parsed type).

    Returns:
        The value coerced to the type.

    Raises:
        ValueError: The value does not fit the type.

    Example:
        >>> parse_value("42", "int")
        42
        >>> parse_value("'negative'", 'Literal["positive", "negative"]')
        'negative'
    """
    parsed = _as_type(type_)
    if parsed == ("str",):
        return str(value)
    if parsed[0] == "literal":
        if value in parsed[1]:  # Python equality, as DSPy checks it (2.0 matches 2 and is returned as is)
            return value
        if isinstance(value, str):
            text = value.strip()
            if text.startswith(("Literal[", "str[")) and text.endswith("]"):
                text = text[text.find("[") + 1 : -1]
            if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'":
                text = text[1:-1]
            if text in parsed[1]:
                return text
            value = text
    if not isinstance(value, str):
        return _coerce(value, parsed)
    if parsed[0] == "optional" and parsed[1] == ("str",):
        return value
    return _coerce(_lenient_loads(value), parsed)


# ---------------------------------------------------------------------------------------------
# Validation of the file's shape.
# ---------------------------------------------------------------------------------------------

_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _expect(value: Any, kind: type | tuple, path: str, what: str | None = None) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = any(
        (
            value is None
            if k is type(None)
            else isinstance(value, k) and not (k in (int, float) and isinstance(value, bool))
        )
        for k in kinds
    )
    if not ok:
        wanted = what or " or ".join(_TYPE_NAMES.get(k, "null" if k is type(None) else k.__name__) for k in kinds)
        raise ArtifactError(f"{path}: expected {wanted}, got {_kind(value)}")


def _keys(
    obj: Mapping[str, Any], path: str, required: Sequence[str], optional: Sequence[str] = (), extra_ok: bool = False
) -> None:
    missing = [k for k in required if k not in obj]
    if missing:
        raise ArtifactError(
            f"{path}: missing key {missing[0]!r}" if len(missing) == 1 else f"{path}: missing keys {missing}"
        )
    if not extra_ok:
        unknown = [k for k in obj if k not in required and k not in optional]
        if unknown:
            raise ArtifactError(f"{path}: unexpected key {unknown[0]!r}")


def _check_messages(messages: Any, path: str) -> None:
    _expect(messages, list, path)
    if not messages:
        raise ArtifactError(f"{path}: expected at least one message")
    for i, message in enumerate(messages):
        here = f"{path}[{i}]"
        _expect(message, dict, here)
        _keys(message, here, ("role", "content"))
        _expect(message["role"], str, f"{here}.role")
        if message["role"] not in _ROLES:
            raise ArtifactError(f"{here}.role: expected one of {list(_ROLES)}, got {message['role']!r}")
        _expect(message["content"], str, f"{here}.content")


def _check_placeholders(messages: list[dict[str, Any]], inputs: Sequence[str], path: str) -> None:
    seen = set()
    for i, message in enumerate(messages):
        for match in _PLACEHOLDER_RE.finditer(message["content"]):
            if match.group(1) not in inputs:
                raise ArtifactError(
                    f"{path}[{i}].content: placeholder {match.group(0)!r} names no input field (inputs: {list(inputs)})"
                )
            seen.add(match.group(1))
    missing = [name for name in inputs if name not in seen]
    if missing:
        raise ArtifactError(f"{path}: no placeholder for input field(s) {missing}")


def _check_fields(fields: Any, path: str, output: bool) -> list[str]:
    _expect(fields, list, path)
    names = []
    required = ("name", "type", "prefix", "desc") + (("required", "default") if output else ())
    for i, field in enumerate(fields):
        here = f"{path}[{i}]"
        _expect(field, dict, here)
        _keys(field, here, required)
        for key in ("name", "type", "prefix", "desc"):
            _expect(field[key], str, f"{here}.{key}")
        if not _IDENTIFIER.match(field["name"]):
            raise ArtifactError(f"{here}.name: {field['name']!r} is not a field name")
        try:
            parse_type(field["type"])
        except ValueError as exc:
            raise ArtifactError(f"{here}.type: {exc}") from None
        if output:
            _expect(field["required"], bool, f"{here}.required")
        names.append(field["name"])
    if len(set(names)) != len(names):
        raise ArtifactError(f"{path}: duplicate field names {names}")
    return names


def _check_parse(spec: Any, path: str, adapter: str, outputs: Sequence[str]) -> None:
    _expect(spec, dict, path)
    _keys(spec, path, ("format",), ("labels", "single_field_labels"))
    _expect(spec["format"], str, f"{path}.format")
    if spec["format"] != REPLY_FORMATS[adapter]:
        raise ArtifactError(
            f"{path}.format: {adapter} replies are read as {REPLY_FORMATS[adapter]!r}, got {spec['format']!r}"
        )
    if spec["format"] == "plain":
        _keys(spec, path, ("format", "labels", "single_field_labels"))
        _expect(spec["labels"], dict, f"{path}.labels")
        if sorted(spec["labels"]) != sorted(outputs):
            raise ArtifactError(f"{path}.labels: expected labels for {list(outputs)}, got {list(spec['labels'])}")
        for name, labels in spec["labels"].items():
            _expect(labels, list, f"{path}.labels.{name}")
            for j, label in enumerate(labels):
                _expect(label, str, f"{path}.labels.{name}[{j}]")
        _expect(spec["single_field_labels"], list, f"{path}.single_field_labels")
        for j, label in enumerate(spec["single_field_labels"]):
            _expect(label, str, f"{path}.single_field_labels[{j}]")
    elif len(spec) != 1:
        raise ArtifactError(f"{path}: unexpected key {next(k for k in spec if k != 'format')!r}")


def _check_predictor(entry: Any, path: str) -> None:
    _expect(entry, dict, path)
    _keys(
        entry,
        path,
        (
            "adapter",
            "adapter_options",
            "messages",
            "input_fields",
            "output_fields",
            "instructions",
            "demos",
            "lm_kwargs",
            "lm",
            "parse",
            "fallback",
        ),
        ("label_rule",),
    )
    _expect(entry["adapter"], str, f"{path}.adapter")
    if entry["adapter"] not in REPLY_FORMATS:
        raise ArtifactError(f"{path}.adapter: expected one of {list(REPLY_FORMATS)}, got {entry['adapter']!r}")
    _expect(entry["adapter_options"], dict, f"{path}.adapter_options")
    inputs = _check_fields(entry["input_fields"], f"{path}.input_fields", output=False)
    outputs = _check_fields(entry["output_fields"], f"{path}.output_fields", output=True)
    if not outputs:
        raise ArtifactError(f"{path}.output_fields: expected at least one output field")
    clash = set(inputs) & set(outputs)
    if clash:
        raise ArtifactError(f"{path}: field(s) {sorted(clash)} are both inputs and outputs")
    _check_messages(entry["messages"], f"{path}.messages")
    _check_placeholders(entry["messages"], inputs, f"{path}.messages")
    _expect(entry["instructions"], str, f"{path}.instructions")
    _expect(entry["demos"], list, f"{path}.demos")
    for i, demo in enumerate(entry["demos"]):
        _expect(demo, dict, f"{path}.demos[{i}]")
    _expect(entry["lm_kwargs"], dict, f"{path}.lm_kwargs")
    _expect(entry["lm"], (dict, type(None)), f"{path}.lm")
    _check_parse(entry["parse"], f"{path}.parse", entry["adapter"], outputs)
    fallback = entry["fallback"]
    _expect(fallback, (dict, type(None)), f"{path}.fallback")
    if fallback is not None:
        here = f"{path}.fallback"
        _keys(fallback, here, ("adapter", "messages", "parse"))
        if fallback["adapter"] != "JSONAdapter":
            raise ArtifactError(f"{here}.adapter: expected 'JSONAdapter', got {fallback['adapter']!r}")
        _check_messages(fallback["messages"], f"{here}.messages")
        _check_placeholders(fallback["messages"], inputs, f"{here}.messages")
        _check_parse(fallback["parse"], f"{here}.parse", "JSONAdapter", outputs)
    if "label_rule" in entry:
        _check_label_rule(entry["label_rule"], f"{path}.label_rule", outputs)


def _check_label_rule(rule: Any, path: str, outputs: Sequence[str]) -> None:
    _expect(rule, dict, path)
    _keys(rule, path, ("field", "labels", "prior", "method"), ("replies",))
    if rule["field"] not in outputs:
        raise ArtifactError(f"{path}.field: {rule['field']!r} is not an output field")
    _expect(rule["labels"], list, f"{path}.labels")
    if len(rule["labels"]) < 2 or len(set(map(str, rule["labels"]))) != len(rule["labels"]):
        raise ArtifactError(f"{path}.labels: expected at least 2 distinct labels")
    for j, label in enumerate(rule["labels"]):
        _expect(label, str, f"{path}.labels[{j}]")
    if rule["prior"] is not None:
        _expect(rule["prior"], list, f"{path}.prior")
        if len(rule["prior"]) != len(rule["labels"]) or not all(
            isinstance(p, (int, float)) and not isinstance(p, bool) and p >= 0 for p in rule["prior"]
        ):
            raise ArtifactError(f"{path}.prior: expected one non-negative number per label")
    if rule["method"] != "likelihood":
        raise ArtifactError(f"{path}.method: expected 'likelihood', got {rule['method']!r}")
    if "replies" in rule:
        _expect(rule["replies"], list, f"{path}.replies")
        if len(rule["replies"]) != len(rule["labels"]) or not all(isinstance(r, str) and r for r in rule["replies"]):
            raise ArtifactError(f"{path}.replies: expected one non-empty reply text per label")


def choose_label(
    rule: Mapping[str, Any], *, label_scores: Mapping[str, float] | None = None, reply: str | None = None
) -> str:
    """Apply a predictor's ``label_rule``: the answer is one of its labels.

    With ``label_scores`` (the log-probability your serving stack gives each
    label as the reply, e.g. from an engine that scores given text) the label
    with the highest calibrated probability wins, exactly as at compile time.
    Without them, the reply is matched to the closest label: equal after
    lowercasing and stripping punctuation, else the label the reply starts
    with or contains (the earliest, then the longest), else the label sharing
    the most characters in order.

    Args:
        rule: The artifact's ``predictors[NAME]["label_rule"]``.
        label_scores: ``{label: log-probability}`` for every label.
        reply: The model's free reply (used when there are no scores).

    Returns:
        The chosen label.

    Raises:
        ValueError: Neither input given, or scores missing a label.

    Example:
        >>> rule = {"field": "output", "labels": ["negative", "positive"], "prior": None, "method": "likelihood"}
        >>> choose_label(rule, reply="The sentiment is positive.")
        'positive'
        >>> choose_label(dict(rule, prior=[0.2, 0.8]), label_scores={"negative": -1.2, "positive": -0.4})
        'negative'
    """
    labels = [str(label) for label in rule["labels"]]
    if label_scores is not None:
        missing = [label for label in labels if label not in label_scores]
        if missing:
            raise ValueError(f"label_scores lacks the label(s) {missing}")
        prior = rule.get("prior")
        scores = [float(label_scores[label]) for label in labels]
        if prior is not None:
            scores = [s - math.log(max(float(p), 1e-6)) for s, p in zip(scores, prior)]
        return labels[max(range(len(labels)), key=scores.__getitem__)]
    if reply is None:
        raise ValueError("give label_scores or a reply")

    def norm(text: str) -> str:
        return " ".join(re.sub(r"[^\w\s-]", " ", text.lower()).split())

    text = norm(reply)
    for label in labels:
        if norm(label) == text:
            return label
    hits = [
        (text.find(norm(label)), -len(label), i)
        for i, label in enumerate(labels)
        if norm(label) and re.search(r"(?<!\w)" + re.escape(norm(label)) + r"(?!\w)", text)
    ]
    if hits:
        return labels[min(hits)[2]]
    return max(labels, key=lambda label: (_common_chars(norm(label), text), -labels.index(label)))


def _common_chars(a: str, b: str) -> int:
    """Length of the longest common subsequence of ``a`` and ``b``."""
    previous = [0] * (len(b) + 1)
    for char in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if char == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _check_metadata(metadata: Any) -> None:
    _expect(metadata, dict, "metadata")
    _keys(
        metadata,
        "metadata",
        REQUIRED_METADATA_KEYS,
        extra_ok=True,
    )
    _expect(metadata["dspy_version"], str, "metadata.dspy_version")
    _expect(metadata["dspy_ext_version"], str, "metadata.dspy_ext_version")
    _expect(metadata["optimizer"], (str, type(None)), "metadata.optimizer")
    _expect(metadata["optimizer_settings"], (dict, type(None)), "metadata.optimizer_settings")
    _expect(metadata["seed"], (int, type(None)), "metadata.seed")
    _expect(metadata["data_hash"], (str, type(None)), "metadata.data_hash")
    _expect(metadata["dev_score"], (int, float, type(None)), "metadata.dev_score", "a number or null")
    _expect(metadata["test_score"], (int, float, type(None)), "metadata.test_score", "a number or null")
    _expect(metadata["created_at"], str, "metadata.created_at")


def validate(data: Any, *, check_hash: bool = True) -> None:
    """Check an artifact's schema, version, shape and (optionally) content hash.

    Args:
        data: The decoded JSON.
        check_hash: Also recompute and compare ``content_hash``.

    Raises:
        ArtifactError: The first problem found, naming the key path
            (``predictors.predict.messages[1].content: expected a string, got a number``).

    Example:
        >>> try:
        ...     validate({"schema": "other"})
        ... except ArtifactError as exc:
        ...     print(exc)
        not a dspy-ext prompt artifact: schema is 'other', expected 'dspy-ext.prompt-artifact'
    """
    _expect(data, dict, "(top level)", "a JSON object")
    _check_schema(data)
    _keys(data, "(top level)", ("schema", "schema_version", "content_hash", "predictors", "lm", "metadata"))
    _expect(data["content_hash"], str, "content_hash")
    if not _HEX64.match(data["content_hash"]):
        raise ArtifactError("content_hash: expected 64 lowercase hex digits (a sha256)")
    _expect(data["predictors"], dict, "predictors")
    if not data["predictors"]:
        raise ArtifactError("predictors: expected at least one predictor")
    for name, entry in data["predictors"].items():
        _check_predictor(entry, f"predictors.{name}")
    _check_lm(data["lm"])
    _check_metadata(data["metadata"])
    if check_hash:
        _check_hash(data)


def _check_schema(data: Mapping[str, Any]) -> None:
    if "schema" not in data:
        raise ArtifactError(f"not a dspy-ext prompt artifact: no 'schema' key (expected {SCHEMA!r})")
    if data["schema"] != SCHEMA:
        raise ArtifactError(f"not a dspy-ext prompt artifact: schema is {data['schema']!r}, expected {SCHEMA!r}")
    if "schema_version" not in data:
        raise ArtifactError("(top level): missing key 'schema_version'")
    version = data["schema_version"]
    _expect(version, int, "schema_version")
    if version > SCHEMA_VERSION:
        raise ArtifactError(
            f"schema_version {version} is newer than this runtime supports (up to {SCHEMA_VERSION}); "
            "upgrade dspy-ext (or the vendored runtime.py)"
        )
    if version < 1:
        raise ArtifactError(f"schema_version {version} is unknown (this runtime reads 1 to {SCHEMA_VERSION})")


def _check_lm(lm: Any) -> None:
    _expect(lm, (dict, type(None)), "lm")
    if lm is not None:
        _keys(lm, "lm", ("model",), extra_ok=True)
        _expect(lm["model"], str, "lm.model")
        window = lm.get("context_window")
        _expect(window, (int, type(None)), "lm.context_window", "a positive integer or null")
        if window is not None and window < 1:
            raise ArtifactError(f"lm.context_window: expected a positive integer or null, got {window}")


def _check_hash(data: Mapping[str, Any]) -> None:
    try:
        actual = compute_hash(data)
    except ValueError as exc:  # NaN/Infinity cannot be hashed canonically
        raise ArtifactError(f"content cannot be hashed: {exc}") from None
    if actual != data["content_hash"]:
        raise ArtifactError(
            f"content hash mismatch: the file says {data['content_hash'][:16]}..., its content hashes to "
            f"{actual[:16]}...; the artifact was edited or corrupted after export"
        )


# ---------------------------------------------------------------------------------------------
# Parsing replies.
# ---------------------------------------------------------------------------------------------

_CHAT_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]")
_JSON_FENCE = re.compile(r"```[\w-]*[ \t]*\n(.*?)```", re.DOTALL)
_PLAIN_FENCE = re.compile(r"^```[\w-]*\s*$")
_DECORATION = "*_#`> "


def _with_defaults(entry: Mapping[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """Fill missing optional output fields (mirrors DSPy's ``apply_output_field_defaults``)."""
    completed = {}
    for field in entry["output_fields"]:
        name = field["name"]
        if name in fields:
            completed[name] = fields[name]
        elif not field["required"]:
            completed[name] = copy.deepcopy(field["default"])
        elif parse_type(field["type"])[0] in ("optional", "none"):
            completed[name] = None
    return completed


def _json_object(text: str) -> Any:
    """The JSON object in a reply: the whole reply, a fenced block, or the first ``{...}``."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    fence = _JSON_FENCE.search(text)
    if fence is not None:
        try:
            return json.loads(fence.group(1))
        except ValueError:
            pass
    decoder = json.JSONDecoder()
    for i, char in enumerate(text):
        if char == "{":
            try:
                value, _ = decoder.raw_decode(text, i)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def _strip_decoration(line: str) -> str:
    return line.strip().strip(_DECORATION).strip()


def _match_label(line: str, labels: Sequence[str]) -> str | None:
    bare = _strip_decoration(line)
    low = bare.lower()
    for label in labels:
        if low.startswith(label) and low[len(label) :].lstrip(" *_").startswith(":"):
            rest = bare[len(label) :].lstrip(" *_")[1:]
            return _strip_decoration(rest) if rest.strip() else ""
    return None


class PlainReplyError(ValueError):
    """A plain-format reply lacks a field (or is empty).

    Attributes:
        missing: The output fields not found (empty when the reply is empty).
        partial: The fields that were found, as text.
    """

    def __init__(self, message: str, missing: Sequence[str] = (), partial: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.missing = list(missing)
        self.partial = dict(partial or {})


def split_plain_reply(
    reply: str,
    names: Sequence[str],
    labels: Mapping[str, Sequence[str]],
    single_field_labels: Sequence[str] = ("output", "answer"),
) -> dict[str, str]:
    """Cut a plain-format reply into the text of each output field.

    This is the lenient parse of ``PlainAdapter``, shared with the runtime so that
    an exported prompt reads replies exactly as DSPy did. For one output field: the
    first content line, an echoed ``Label:`` stripped (or the next line when the
    label stands alone). For several: the text after each field's label; a missing
    last field falls back to the last line (how small models end a chain of
    thought), a missing first field to the lines before any label.

    Args:
        reply: The model's reply.
        names: Output field names, in order.
        labels: Per field, the labels a model may echo (lower case, longest first).
        single_field_labels: Extra labels accepted when there is one output field.

    Returns:
        ``{field: text}`` for every name.

    Raises:
        PlainReplyError: The reply is empty or lacks a field.

    Example:
        >>> split_plain_reply("Output: positive", ["output"], {"output": ["output"]})
        {'output': 'positive'}
    """
    lines = [ln for ln in reply.splitlines() if ln.strip() and not _PLAIN_FENCE.match(ln.strip())]
    if not lines:
        raise PlainReplyError("the reply is empty")
    if len(names) == 1:
        return {names[0]: _single_plain_field(lines, list(labels[names[0]]) + list(single_field_labels))}
    found, current, preamble = _plain_sections(lines, names, labels)
    missing = _recover_missing(found, current, preamble, names)
    if missing:
        raise PlainReplyError(
            f"missing output field(s) {missing}", missing, {key: " ".join(value) for key, value in found.items()}
        )
    return {key: "\n".join(value).strip() for key, value in found.items()}


def _single_plain_field(lines: Sequence[str], labels: Sequence[str]) -> str:
    """The one output field: the first line, an echoed label stripped (the next line if the label stands alone)."""
    rest = _match_label(lines[0], labels)
    if rest == "" and len(lines) > 1:
        return _strip_decoration(lines[1])
    return rest if rest is not None else _strip_decoration(lines[0])


def _plain_sections(
    lines: Sequence[str], names: Sequence[str], labels: Mapping[str, Sequence[str]]
) -> tuple[dict[str, list[str]], str | None, list[str]]:
    """The lines under each field's first label, the last field found, and the lines before any label."""
    found: dict[str, list[str]] = {}
    current: str | None = None
    preamble: list[str] = []
    for line in lines:
        hit = next(((key, rest) for key in names if (rest := _match_label(line, labels[key])) is not None), None)
        if hit is not None and hit[0] not in found:
            current = hit[0]
            found[current] = [hit[1]] if hit[1] else []
        elif current is not None:
            found[current].append(line.strip())
        else:
            preamble.append(line.strip())
    return found, current, preamble


def _recover_missing(
    found: dict[str, list[str]], current: str | None, preamble: list[str], names: Sequence[str]
) -> list[str]:
    """Fill a missing last field from the last line, a missing first one from the preamble; the rest missing."""
    missing = [key for key in names if key not in found]
    if missing == [names[-1]]:
        source = found[current] if current is not None else preamble
        if len(source) > 1:
            found[names[-1]] = [source.pop()]
            missing = []
    elif missing == list(names[:1]) and preamble:
        found[names[0]] = preamble
        missing = []
    return missing


class PromptArtifact:
    """A loaded, validated prompt artifact.

    Build one with :func:`load` or :func:`loads`.

    Attributes:
        data: The artifact as decoded JSON (do not modify it).
        path: The file it was read from, if any.

    Example:
        >>> art = load("program.prompt.json")               # doctest: +SKIP
        >>> art.names                                       # doctest: +SKIP
        ('predict',)
        >>> art.run("predict", my_llm, input="So dull.")    # doctest: +SKIP
        {'output': 'negative'}
    """

    def __init__(self, data: dict[str, Any], path: str | None = None) -> None:
        self.data = data
        self.path = path

    # ---- overview ------------------------------------------------------------------------
    @property
    def content_hash(self) -> str:
        """The sha256 of the artifact's content."""
        return self.data["content_hash"]

    @property
    def schema_version(self) -> int:
        """The schema version of the file."""
        return self.data["schema_version"]

    @property
    def names(self) -> tuple[str, ...]:
        """Predictor names, in the program's order."""
        return tuple(self.data["predictors"])

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the metadata (versions, optimizer, seed, data hash, scores, creation time)."""
        return copy.deepcopy(self.data["metadata"])

    @property
    def lm(self) -> dict[str, Any] | None:
        """A copy of the LM settings recorded at export (model, temperature, max_tokens, ...)."""
        return copy.deepcopy(self.data["lm"])

    def predictor(self, name: str) -> dict[str, Any]:
        """A copy of one predictor's entry (messages, fields, instructions, demos, parse spec).

        Raises:
            KeyError: No predictor of that name (the message lists the names).
        """
        return copy.deepcopy(self._entry(name))

    def input_names(self, name: str) -> list[str]:
        """The input field names of predictor ``name``, in prompt order."""
        return [f["name"] for f in self._entry(name)["input_fields"]]

    def output_names(self, name: str) -> list[str]:
        """The output field names of predictor ``name``, in prompt order."""
        return [f["name"] for f in self._entry(name)["output_fields"]]

    @property
    def context_window(self) -> int | None:
        """The context window (tokens) of the LM recorded at export, when it was known."""
        lm = self.data["lm"]
        return lm.get("context_window") if lm is not None else None

    def check_context(
        self,
        messages: Sequence[Mapping[str, str]],
        count_tokens: Callable[[list[dict[str, str]]], int],
        *,
        context_window: int | None = None,
        reply_tokens: int = 0,
    ) -> int:
        """Refuse rendered messages that do not fit the context window (see :func:`check_context`).

        Args:
            messages: Messages from :meth:`render`.
            count_tokens: ``messages -> prompt tokens`` for your model.
            context_window: Your model's window; default the one recorded at
                export (:attr:`context_window`).
            reply_tokens: Tokens to keep free for the reply.

        Returns:
            The prompt's token count.

        Raises:
            ContextOverflowError: The prompt does not fit; same message as the
                ``context_overflow`` rows of dspy-ext's evaluator.
            ValueError: No window given and none recorded in the artifact.

        Example:
            >>> messages = art.render("predict", input=long_text)          # doctest: +SKIP
            >>> art.check_context(messages, my_tokenizer_count)            # doctest: +SKIP
        """
        window = context_window if context_window is not None else self.context_window
        if window is None:
            raise ValueError("the artifact records no context window (its LM did not report one); pass context_window=")
        model = self.data["lm"]["model"] if self.data["lm"] is not None else None
        return check_context(messages, count_tokens, window, reply_tokens=reply_tokens, model=model)

    def has_fallback(self, name: str) -> bool:
        """Whether a failed parse of predictor ``name`` is retried with a JSON prompt (ChatAdapter)."""
        return self._entry(name)["fallback"] is not None

    def _entry(self, name: str) -> dict[str, Any]:
        try:
            return self.data["predictors"][name]
        except KeyError:
            raise KeyError(f"no predictor {name!r} in the artifact; predictors: {list(self.names)}") from None

    # ---- rendering -----------------------------------------------------------------------
    def render(self, name: str, /, **inputs: Any) -> list[dict[str, str]]:
        """The chat messages for predictor ``name`` with ``inputs`` filled in.

        Args:
            name: The predictor name (see :attr:`names`).
            **inputs: One value per input field (str, int, float, bool, None,
                or lists/tuples/dicts of those).

        Returns:
            ``[{"role": ..., "content": ...}, ...]``, byte for byte what DSPy's
            adapter would send.

        Raises:
            RenderError: Missing or unexpected inputs, or an unsupported value.
            KeyError: Unknown predictor.

        Example:
            >>> art.render("predict", input="Great film.")[-1]   # doctest: +SKIP
            {'role': 'user', 'content': 'Input: Great film.'}
        """
        entry = self._entry(name)
        return self._fill(name, entry, entry["messages"], inputs)

    def render_fallback(self, name: str, /, **inputs: Any) -> list[dict[str, str]]:
        """The JSON-format messages DSPy's ChatAdapter retries with after a failed parse.

        Raises:
            ValueError: The predictor has no fallback (see :meth:`has_fallback`).
        """
        entry = self._entry(name)
        if entry["fallback"] is None:
            raise ValueError(f"predictor {name!r} ({entry['adapter']}) has no JSON fallback")
        return self._fill(name, entry, entry["fallback"]["messages"], inputs)

    def _fill(
        self, name: str, entry: Mapping[str, Any], messages: list[dict[str, str]], inputs: Mapping[str, Any]
    ) -> list[dict[str, str]]:
        fields = {f["name"]: f for f in entry["input_fields"]}
        missing = [k for k in fields if k not in inputs]
        extra = [k for k in inputs if k not in fields]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing input(s) {missing}")
            if extra:
                parts.append(f"unexpected input(s) {extra}")
            raise RenderError(f"predictor {name!r}: {' and '.join(parts)}; inputs are {list(fields)}")
        values = {}
        for key, field in fields.items():
            value = inputs[key]
            if value is None and entry["adapter"] == "PlainAdapter":
                raise RenderError(
                    f"predictor {name!r}: input {key!r} is None; the PlainAdapter leaves None inputs out of the "
                    "prompt, which a template cannot represent (pass a value)"
                )
            try:
                text = format_value(value, field["type"])
            except TypeError as exc:
                raise RenderError(f"predictor {name!r}: input {key!r}: {exc}") from None
            if _CUSTOM_TYPE_MARKER in text:
                raise RenderError(
                    f"predictor {name!r}: input {key!r} holds a DSPy custom-type marker, "
                    "which DSPy would turn into non-text content"
                )
            values[key] = text
        return [{"role": m["role"], "content": _substitute(m["content"], values)} for m in messages]

    # ---- parsing -------------------------------------------------------------------------
    def parse(self, name: str, reply: str, /) -> dict[str, Any]:
        """Read a reply to :meth:`render`'s messages into the output fields.

        Args:
            name: The predictor name.
            reply: The model's reply text.

        Returns:
            ``{output_field: value}`` in the predictor's output order, values
            coerced to the field types.

        Raises:
            ParseError: The reply does not hold every required output field,
                or a value does not fit its type.

        Example:
            >>> art.parse("predict", "[[ ## output ## ]]\\npositive\\n\\n[[ ## completed ## ]]")  # doctest: +SKIP
            {'output': 'positive'}
        """
        entry = self._entry(name)
        return self._parse(name, entry, entry["parse"], entry["adapter"], reply)

    def parse_fallback(self, name: str, reply: str, /) -> dict[str, Any]:
        """Read a reply to :meth:`render_fallback`'s messages (JSON)."""
        entry = self._entry(name)
        if entry["fallback"] is None:
            raise ValueError(f"predictor {name!r} ({entry['adapter']}) has no JSON fallback")
        return self._parse(name, entry, entry["fallback"]["parse"], "JSONAdapter", reply)

    def run(self, name: str, complete: Callable[[list[dict[str, str]]], str], /, **inputs: Any) -> dict[str, Any]:
        """Render, call ``complete`` and parse, retrying once in JSON like DSPy's ChatAdapter.

        Args:
            name: The predictor name.
            complete: Your LM call: messages -> reply text.
            **inputs: One value per input field.

        Returns:
            The parsed output fields.

        Raises:
            ParseError: The reply (and the fallback reply, if any) could not be parsed.
            RenderError: Bad inputs.

        Example:
            >>> art.run("predict", lambda messages: client.chat(messages), input="Great.")  # doctest: +SKIP
            {'output': 'positive'}
        """
        try:
            return self.parse(name, complete(self.render(name, **inputs)))
        except ParseError:
            if not self.has_fallback(name):
                raise
        return self.parse_fallback(name, complete(self.render_fallback(name, **inputs)))

    def label_rule(self, name: str) -> dict[str, Any] | None:
        """The predictor's ``label_rule`` (its answer is one of a closed label set), or ``None``."""
        return self._entry(name).get("label_rule")

    def answer(
        self, name: str, score: Callable[[list[dict[str, str]], list[str]], Sequence[float]], /, **inputs: Any
    ) -> dict[str, Any]:
        """Render and answer by the predictor's ``label_rule``: the label whose reply scores highest.

        Args:
            name: The predictor name (it must have a ``label_rule``).
            score: Your serving stack's scorer: (messages, reply texts) -> the log-probability of each
                reply as the assistant's answer to the messages (no end-of-turn token).
            **inputs: One value per input field.

        Returns:
            ``{field: label}``, the label chosen as at compile time (:func:`choose_label`).

        Raises:
            ArtifactError: The predictor has no label rule.
            RenderError: Bad inputs.

        Example:
            >>> art.answer("predict", my_scorer, input="Great.")  # doctest: +SKIP
            {'output': 'positive'}
        """
        rule = self.label_rule(name)
        if rule is None:
            raise ArtifactError(f"predictor {name!r} has no label_rule; call run() instead")
        labels = [str(label) for label in rule["labels"]]
        replies = [str(r) for r in rule.get("replies") or labels]
        scores = list(score(self.render(name, **inputs), replies))
        if len(scores) != len(labels):
            raise ValueError(f"the scorer gave {len(scores)} scores for {len(labels)} replies")
        return {rule["field"]: choose_label(rule, label_scores=dict(zip(labels, scores)))}

    def _parse(
        self, name: str, entry: Mapping[str, Any], spec: Mapping[str, Any], adapter: str, reply: str
    ) -> dict[str, Any]:
        if not isinstance(reply, str):
            raise TypeError(f"reply must be a string, got {type(reply).__name__}")
        if not reply:
            raise ParseError(name, adapter, reply, "the LM returned an empty reply")
        fmt = spec["format"]
        if fmt == "chat":
            fields = self._parse_chat(name, entry, reply)
        elif fmt == "json":
            fields = self._parse_json(name, entry, reply)
        else:
            return self._parse_plain(name, entry, spec, reply)
        fields = _with_defaults(entry, fields)
        missing = [f["name"] for f in entry["output_fields"] if f["name"] not in fields]
        if missing:
            raise ParseError(name, adapter, reply, f"missing output field(s) {missing}")
        return {f["name"]: fields[f["name"]] for f in entry["output_fields"]}

    def _parse_chat(self, name: str, entry: Mapping[str, Any], reply: str) -> dict[str, Any]:
        types = {f["name"]: f["type"] for f in entry["output_fields"]}
        sections: list[tuple[str | None, list[str]]] = [(None, [])]
        for line in reply.splitlines():
            match = _CHAT_HEADER.match(line.strip())
            if match:
                # DSPy slices the unstripped line at the stripped line's offset; kept identical.
                rest = line[match.end() :].strip()
                sections.append((match.group(1), [rest] if rest else []))
            else:
                sections[-1][1].append(line)
        fields: dict[str, Any] = {}
        for key, lines in sections:
            if key in types and key not in fields:
                fields[key] = _parse_field(name, "ChatAdapter", reply, key, "\n".join(lines).strip(), types[key])
        return fields

    def _parse_json(self, name: str, entry: Mapping[str, Any], reply: str) -> dict[str, Any]:
        obj = _json_object(reply)
        if not isinstance(obj, dict):
            raise ParseError(name, "JSONAdapter", reply, "the reply holds no JSON object")
        types = {f["name"]: f["type"] for f in entry["output_fields"]}
        fields = {}
        for key, value in obj.items():
            if key in types:
                fields[key] = _parse_field(name, "JSONAdapter", reply, key, value, types[key])
        return fields

    def _parse_plain(self, name: str, entry: Mapping[str, Any], spec: Mapping[str, Any], reply: str) -> dict[str, Any]:
        outputs = entry["output_fields"]
        try:
            raw = split_plain_reply(reply, [f["name"] for f in outputs], spec["labels"], spec["single_field_labels"])
        except PlainReplyError as exc:
            problem = str(exc)
            if exc.missing:
                problem += "; expected lines starting with " + ", ".join(f["prefix"] for f in outputs)
            raise ParseError(name, "PlainAdapter", reply, problem) from None
        parsed = {}
        for field in outputs:
            key = field["name"]
            try:
                parsed[key] = _plain_coerce(raw[key], field["type"])
            except ValueError as exc:
                raise ParseError(
                    name, "PlainAdapter", reply, f"field {key!r} could not be read as {field['type']}: {exc}"
                ) from None
        return parsed

    # ---- views ---------------------------------------------------------------------------
    def text(self, name: str) -> str:
        """The messages of predictor ``name`` as plain text, placeholders shown as ``⟦input:NAME⟧``.

        Example:
            >>> print(art.text("predict"))   # doctest: +SKIP
            ===== system =====
            Output whether the sentiment ...
        """
        entry = self._entry(name)
        blocks = [f"===== {m['role']} =====\n{m['content']}" for m in entry["messages"]]
        return "\n\n".join(blocks) + "\n"

    def to_json(self) -> str:
        """The artifact as indented JSON text (what :func:`loads` reads back)."""
        return json.dumps(self.data, indent=2, ensure_ascii=False) + "\n"

    def __repr__(self) -> str:
        where = f" from {self.path}" if self.path else ""
        return f"PromptArtifact({list(self.names)}, hash={self.content_hash[:12]}{where})"


def _parse_field(predictor: str, adapter: str, reply: str, key: str, value: Any, type_: str) -> Any:
    """``parse_value(value, type_)`` for output field ``key``, a failure raised as a :class:`ParseError`."""
    try:
        return parse_value(value, type_)
    except ValueError as exc:
        raise ParseError(
            predictor, adapter, reply, f"field {key!r} ({type_}) could not be read from {value!r}: {exc}"
        ) from None


def _plain_coerce(value: str, type_: str) -> Any:
    """``PlainAdapter._coerce``: case-insensitive Literal match first, then :func:`parse_value`."""
    parsed = parse_type(type_)
    if parsed == ("str",):
        return value
    if parsed[0] == "literal":
        wanted = value.strip().strip("'\".").lower()
        for option in parsed[1]:
            if str(option).lower() == wanted:
                return option
    return parse_value(value, parsed)


def _substitute(text: str, values: Mapping[str, str]) -> str:
    """Replace every placeholder in one pass; inserted text is never scanned again."""
    parts = []
    pos = 0
    for match in _PLACEHOLDER_RE.finditer(text):
        parts.append(text[pos : match.start()])
        parts.append(values[match.group(1)])
        pos = match.end()
    parts.append(text[pos:])
    return "".join(parts)


def loads(text: str | bytes, *, source: str = "<string>") -> PromptArtifact:
    """Read and validate an artifact from JSON text.

    Args:
        text: The file's content.
        source: A name for error messages.

    Returns:
        The :class:`PromptArtifact`.

    Raises:
        ArtifactError: Invalid or truncated JSON, another schema, a newer
            schema version, a malformed key (named by its path) or a content
            hash mismatch.

    Example:
        >>> try:
        ...     loads('{"schema": "dspy-ext.prompt-artifact"')
        ... except ArtifactError as exc:
        ...     print(exc)
        <string>: not valid JSON (truncated or corrupted?): Expecting ',' delimiter at line 1, column 38
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ArtifactError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise ArtifactError(f"{source}: the file is empty")
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ArtifactError(
            f"{source}: not valid JSON (truncated or corrupted?): {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except ValueError as exc:
        raise ArtifactError(f"{source}: {exc}") from None
    try:
        validate(data)
    except ArtifactError as exc:
        raise ArtifactError(f"{source}: {exc}") from None
    return PromptArtifact(data, None if source == "<string>" else source)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name} (NaN/Infinity are not allowed)")


def load(path: str | Path) -> PromptArtifact:
    """Read and validate an artifact file.

    Args:
        path: The ``.json`` file written by ``dspy_ext.export.export``.

    Returns:
        The :class:`PromptArtifact`.

    Raises:
        ArtifactError: See :func:`loads`; also for a file that cannot be read.

    Example:
        >>> art = load("sentiment.prompt.json")   # doctest: +SKIP
        >>> art.render("predict", input="Dull.")  # doctest: +SKIP
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read the artifact: {exc.strerror or exc}") from None
    return loads(raw, source=str(path))
