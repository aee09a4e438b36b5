"""Export a DSPy program's prompts as a versioned, hashed JSON artifact.

For every ``dspy.Predict`` in the program (frozen sub-programs included) the
artifact stores the messages the adapter's real ``format()`` returns when each
input value is a placeholder (``⟦input:NAME⟧``), so the stored text is exactly
what DSPy sends, demos and output-format reminders included. The runtime
(:mod:`dspy_ext.runtime`) later puts formatted values into the
placeholders. Before writing, every predictor is rendered once more through
the runtime with probe values and compared with ``adapter.format()`` on the
same values; a difference refuses the export.

What a template cannot represent is refused with a :class:`ExportError`
naming the predictor: adapters other than ChatAdapter, JSONAdapter and
``PlainAdapter`` (subclasses included), history/tool/image and other custom
field types, decision outputs (``Predict.fields``), and demos or settings
that are not plain JSON.
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import logging
import os
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import dspy

from dspy_ext.adapters.plain import PlainAdapter, field_labels
from dspy_ext.lm.answer_rule import answer_rule_of
from dspy_ext.prompt_state import compile_record, demo_to_dict, predictors
from dspy_ext.runtime import (
    REQUIRED_METADATA_KEYS,
    SCHEMA,
    SCHEMA_VERSION,
    ArtifactError,
    PromptArtifact,
    compute_hash,
    format_type,
    placeholder,
    validate,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_CLASSES",
    "ExportError",
    "adapter_from_options",
    "adapter_options",
    "annotation_type",
    "build_artifact",
    "export",
    "lm_settings",
]

#: The adapters an artifact can capture, by the name stored in the artifact.
ADAPTER_CLASSES: dict[str, type[dspy.Adapter]] = {
    "ChatAdapter": dspy.ChatAdapter,
    "JSONAdapter": dspy.JSONAdapter,
    "PlainAdapter": PlainAdapter,
}

#: LM request settings copied into the artifact (credentials and endpoints never are).
LM_SETTING_KEYS = (
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "top_p",
    "top_k",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "response_format",
)

#: Metadata keys every artifact this exporter writes carries (``None`` when unknown): the runtime's
#: required keys and the guard report.
METADATA_KEYS = (*REQUIRED_METADATA_KEYS, "guard_report")

_SUPPORTED_TYPES = "str, int, float, bool, Any, Literal[...], list[...], dict[str, ...] and Optional[...]"


class ExportError(ValueError):
    """The program (or an export option) cannot be represented as a prompt artifact."""


# ---- types -------------------------------------------------------------------------------------


def annotation_type(annotation: Any) -> tuple:
    """The runtime's parsed type for a field annotation.

    Args:
        annotation: A field's type annotation (``str``, ``list[str]``,
            ``Literal["a", "b"]``, ``int | None``, ...).

    Returns:
        The parsed type tuple (see :func:`dspy_ext.runtime.parse_type`).

    Raises:
        TypeError: The annotation is outside the supported set (custom types,
            ``dspy.History``, ``dspy.Image``, tools, enums, unions, tuples ...).

    Example:
        >>> annotation_type(list[str])
        ('list', ('str',))
    """
    simple = {str: ("str",), int: ("int",), float: ("float",), bool: ("bool",), Any: ("any",)}
    if annotation in simple:
        return simple[annotation]
    if annotation is list:
        return ("list", ("any",))
    if annotation is dict:
        return ("dict", ("any",))
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        for member in args:
            if isinstance(member, enum.Enum) or not (member is None or isinstance(member, (str, int, float, bool))):
                raise TypeError(f"Literal member {member!r} is not a string, number, boolean or None")
        return ("literal", tuple(args))
    if origin is list:
        return ("list", annotation_type(args[0]) if args else ("any",))
    if origin is dict:
        if args and args[0] is not str:
            raise TypeError(f"dict keys must be str, got {args[0]!r}")
        return ("dict", annotation_type(args[1]) if args else ("any",))
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return ("optional", annotation_type(rest[0]))
        raise TypeError(f"unions other than Optional[X] are not supported ({annotation!r})")
    name = getattr(annotation, "__name__", None) or repr(annotation)
    raise TypeError(f"type {name} is not supported")


def _field_entry(predictor: str, signature: type[dspy.Signature], name: str, output: bool) -> dict[str, Any]:
    field = signature.fields[name]
    try:
        type_string = format_type(annotation_type(field.annotation))
    except TypeError as exc:
        role = "output" if output else "input"
        raise ExportError(
            f"predictor {predictor!r}: {role} field {name!r}: {exc}; a prompt template can only represent "
            f"{_SUPPORTED_TYPES} fields (history, tools, images and other custom types are rendered by DSPy "
            "code at call time)"
        ) from None
    extra = field.json_schema_extra or {}
    entry: dict[str, Any] = {
        "name": name,
        "type": type_string,
        "prefix": extra.get("prefix") or "",
        "desc": extra.get("desc") or "",
    }
    if output:
        required = field.is_required()
        default = None
        if not required:
            default = field.get_default(call_default_factory=True)
            _require_json(default, f"predictor {predictor!r}: default of output field {name!r}")
        entry["required"] = required
        entry["default"] = default
    return entry


# ---- adapters ----------------------------------------------------------------------------------


def _adapter_name(adapter: Any) -> str:
    for name, cls in ADAPTER_CLASSES.items():
        if type(adapter) is cls:
            return name
    raise ExportError(
        f"adapter {type(adapter).__name__} is not supported; an artifact captures exactly one of "
        f"{', '.join(ADAPTER_CLASSES)} (subclasses may format differently)"
    )


def adapter_options(adapter: dspy.Adapter) -> dict[str, Any]:
    """The adapter settings that change its messages or its retry behaviour.

    Args:
        adapter: A ChatAdapter, JSONAdapter or PlainAdapter.

    Returns:
        ``{"use_json_adapter_fallback": bool}`` for ChatAdapter,
        ``{"format_hint": bool}`` for PlainAdapter, ``{}`` for JSONAdapter.

    Example:
        >>> adapter_options(PlainAdapter())
        {'format_hint': False}
    """
    name = _adapter_name(adapter)
    if name == "ChatAdapter":
        return {"use_json_adapter_fallback": bool(adapter.use_json_adapter_fallback)}
    if name == "PlainAdapter":
        return {"format_hint": bool(adapter.format_hint)}
    return {}


def adapter_from_options(name: str, options: Mapping[str, Any]) -> dspy.Adapter:
    """Rebuild the adapter an artifact was exported with.

    Args:
        name: ``"ChatAdapter"``, ``"JSONAdapter"`` or ``"PlainAdapter"``.
        options: The artifact's ``adapter_options``.

    Returns:
        A new adapter instance.

    Example:
        >>> type(adapter_from_options("PlainAdapter", {"format_hint": False})).__name__
        'PlainAdapter'
    """
    if name not in ADAPTER_CLASSES:
        raise ValueError(f"unknown adapter {name!r}; expected one of {list(ADAPTER_CLASSES)}")
    return ADAPTER_CLASSES[name](**dict(options))


# ---- JSON hygiene ------------------------------------------------------------------------------


def _require_json(value: Any, what: str) -> None:
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ExportError(f"{what} is not plain JSON ({exc})") from None
    if json.loads(text) != value:
        raise ExportError(f"{what} does not survive a JSON round trip unchanged (tuples or non-string keys?)")


def lm_settings(lm: dspy.BaseLM | None) -> dict[str, Any] | None:
    """The LM's model and request settings, never its credentials or endpoints.

    Args:
        lm: A ``dspy.LM`` (or ``None``).

    Returns:
        ``{"model", "model_type", "temperature", "max_tokens", ...}`` with the
        JSON-valued keys of :data:`LM_SETTING_KEYS` and, when the engine reports
        one, ``context_window``; or ``None``.

    Example:
        >>> lm_settings(dspy.LM("openai/gpt-4o-mini", temperature=0.0, api_key="sk-x"))["temperature"]
        0.0
    """
    if lm is None:
        return None
    kwargs = dict(getattr(lm, "kwargs", None) or {})
    settings: dict[str, Any] = {
        "model": str(getattr(lm, "model", type(lm).__name__)),
        "model_type": getattr(lm, "model_type", None),
        "temperature": kwargs.get("temperature"),
        "max_tokens": kwargs.get("max_tokens"),
    }
    for key in LM_SETTING_KEYS:
        if key in kwargs and key not in settings:
            value = kwargs[key]
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                logger.info("LM setting %s=%r is not JSON; left out of the artifact", key, value)
                continue
            settings[key] = value
    # The runtime's check_context uses it to refuse prompts the model cannot take.
    window = getattr(getattr(lm, "engine", None), "context_window", None)
    if isinstance(window, int) and not isinstance(window, bool) and window > 0:
        settings["context_window"] = window
    return settings


def _metadata(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    import dspy_ext

    metadata: dict[str, Any] = {key: None for key in METADATA_KEYS}
    metadata["dspy_version"] = dspy.__version__
    metadata["dspy_ext_version"] = dspy_ext.__version__
    metadata["created_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    for key, value in (extra or {}).items():
        if not isinstance(key, str):
            raise ExportError(f"metadata keys must be strings, got {key!r}")
        _require_json(value, f"metadata[{key!r}]")
        metadata[key] = value
    return metadata


# ---- predictors --------------------------------------------------------------------------------


def _format(adapter: dspy.Adapter, name: str, predictor: dspy.Predict, inputs: Mapping[str, Any]) -> list[dict]:
    messages = adapter.format(predictor.signature, predictor.demos, dict(inputs))
    out = []
    for i, message in enumerate(messages):
        if set(message) != {"role", "content"} or not isinstance(message["content"], str):
            raise ExportError(
                f"predictor {name!r}: {type(adapter).__name__} produced message {i} with non-text content or "
                f"extra keys ({sorted(message)}), which a text template cannot represent"
            )
        out.append({"role": message["role"], "content": message["content"]})
    return out


def _parse_spec(adapter_name: str, signature: type[dspy.Signature]) -> dict[str, Any]:
    if adapter_name == "ChatAdapter":
        return {"format": "chat"}
    if adapter_name == "JSONAdapter":
        return {"format": "json"}
    return {
        "format": "plain",
        # Labels a model may echo before a value; equal-length labels that both match are the same text,
        # so sorting by (length, text) keeps PlainAdapter's longest-first behaviour deterministically.
        "labels": {
            name: sorted(field_labels(signature, name), key=lambda s: (-len(s), s)) for name in signature.output_fields
        },
        "single_field_labels": ["output", "answer"],
    }


def _predictor_entry(name: str, predictor: dspy.Predict, adapter: dspy.Adapter) -> dict[str, Any]:
    if getattr(predictor, "fields", None):
        raise ExportError(
            f"predictor {name!r} has decision-output settings (Predict.fields for {sorted(predictor.fields)}); "
            "DSPy's DecisionAdapter rewrites those prompts at call time, which a template cannot represent"
        )
    signature = predictor.signature
    adapter_name = _adapter_name(adapter)
    input_fields = [_field_entry(name, signature, f, output=False) for f in signature.input_fields]
    output_fields = [_field_entry(name, signature, f, output=True) for f in signature.output_fields]
    if not output_fields:
        raise ExportError(f"predictor {name!r} has no output fields")
    demos = []
    for i, demo in enumerate(predictor.demos):
        data = demo_to_dict(demo)
        _require_json(data, f"predictor {name!r}: demo {i}")
        demos.append(data)
    lm_kwargs = dict(getattr(predictor, "config", None) or {})
    _require_json(lm_kwargs, f"predictor {name!r}: LM settings (Predict config)")
    slots = {field: placeholder(field) for field in signature.input_fields}
    fallback = None
    if adapter_name == "ChatAdapter" and adapter.use_json_adapter_fallback:
        fallback = {
            "adapter": "JSONAdapter",
            "messages": _format(dspy.JSONAdapter(), name, predictor, slots),
            "parse": {"format": "json"},
        }
    return {
        "adapter": adapter_name,
        "adapter_options": adapter_options(adapter),
        "messages": _format(adapter, name, predictor, slots),
        "input_fields": input_fields,
        "output_fields": output_fields,
        "instructions": signature.instructions or "",
        "demos": demos,
        "lm_kwargs": lm_kwargs,
        # A predictor's answer rule rides on its own LM; the artifact carries it as its label_rule instead.
        "lm": lm_settings(predictor.lm) if predictor.lm is not None and answer_rule_of(predictor) is None else None,
        "parse": _parse_spec(adapter_name, signature),
        "fallback": fallback,
    }


def _probe(parsed: tuple, depth: int = 0) -> Any:
    """A value of the parsed type with braces, quotes and a foreign placeholder in its text."""
    kind = parsed[0]
    if kind in ("str", "any"):
        return f'probe{depth} {{x}} {{{{y}}}} "q" \\ ⟦input:other⟧ «z»'
    if kind == "int":
        return 7
    if kind == "float":
        return 2.5
    if kind == "bool":
        return True
    if kind == "literal":
        return parsed[1][0]
    if kind == "list":
        return [_probe(parsed[1], depth + 1), _probe(parsed[1], depth + 2)]
    if kind == "dict":
        return {"k{x}": _probe(parsed[1], depth + 1)}
    if kind == "optional":
        return _probe(parsed[1], depth)
    return None


def _check_probe(artifact: PromptArtifact, name: str, predictor: dspy.Predict, adapter: dspy.Adapter) -> None:
    """Render once through the runtime and once through DSPy with the same values; they must match."""
    entry = artifact.data["predictors"][name]
    from dspy_ext.runtime import parse_type

    values = {f["name"]: _probe(parse_type(f["type"])) for f in entry["input_fields"]}
    expected = _format(adapter, name, predictor, values)
    if artifact.render(name, **values) != expected:
        raise ExportError(
            f"predictor {name!r}: the template does not reproduce {type(adapter).__name__}.format() for probe "
            "inputs (do the instructions or demos contain the placeholder text '⟦input:'?)"
        )
    if entry["fallback"] is not None:
        expected = _format(dspy.JSONAdapter(), name, predictor, values)
        if artifact.render_fallback(name, **values) != expected:
            raise ExportError(f"predictor {name!r}: the JSON fallback template does not reproduce JSONAdapter.format()")


def program_guard_report(program: dspy.Module) -> dict[str, Any] | None:
    """The regression-guard report a compile attached to ``program`` (``None`` without guards).

    A dspy-ext search and the registry's acceptance gate around DSPy's optimizers both put it in the
    program's :class:`~dspy_ext.prompt_state.CompileRecord`.
    """
    record = compile_record(program)
    report = record.guard_report if record is not None else None
    return report if isinstance(report, dict) else None


def build_artifact(
    program: dspy.Module,
    *,
    adapter: dspy.Adapter | None = None,
    lm: dspy.BaseLM | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> PromptArtifact:
    """Build (without writing) the artifact of ``program``; see :func:`export`.

    Returns:
        A validated :class:`~dspy_ext.runtime.PromptArtifact` with no path.

    Raises:
        ExportError: Something the template approach cannot represent (the
            message names the predictor and field).
    """
    adapter = adapter if adapter is not None else (dspy.settings.adapter or dspy.ChatAdapter())
    _adapter_name(adapter)
    lm = lm if lm is not None else dspy.settings.lm
    found = predictors(program)
    if not found:
        raise ExportError(f"{type(program).__name__} has no dspy.Predict modules to export")
    entries = {name: _predictor_entry(name, predictor, adapter) for name, predictor in found}
    # A predictor with an answer rule (dspy_ext.lm.answer_rule) answers by likelihood among its labels.
    for name, predictor in found:
        rule = answer_rule_of(predictor)
        if rule is not None:
            entries[name]["label_rule"] = {**rule.label_rule, "replies": list(rule.replies)}
    # A program that answers from a closed label set (dspy_ext.evaluation.constrained.LabelConstrained)
    # names its rule per predictor; the runtime applies it with choose_label().
    for name, rule in (getattr(program, "label_rules", None) or {}).items():
        if name not in entries:
            raise ExportError(f"label rule for unknown predictor {name!r}; the program has {sorted(entries)}")
        _require_json(rule, f"predictor {name!r}: label rule")
        entries[name]["label_rule"] = dict(rule)
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "content_hash": "",
        "predictors": entries,
        "lm": lm_settings(lm),
        "metadata": _metadata({"guard_report": program_guard_report(program), **dict(metadata or {})}),
    }
    try:
        data = json.loads(json.dumps(data, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ExportError(f"the artifact is not plain JSON: {exc}") from None
    data["content_hash"] = compute_hash(data)
    try:
        validate(data)
    except ArtifactError as exc:
        raise ExportError(f"the exported content does not validate: {exc}") from None
    artifact = PromptArtifact(data)
    for name, predictor in found:
        _check_probe(artifact, name, predictor, adapter)
    return artifact


def export(
    program: dspy.Module,
    path: str | os.PathLike[str],
    *,
    adapter: dspy.Adapter | None = None,
    lm: dspy.BaseLM | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> PromptArtifact:
    """Write ``program``'s prompts to a JSON artifact that runs without DSPy.

    Args:
        program: Any DSPy module (compiled or not); every ``dspy.Predict`` found
            by ``named_sub_modules`` is exported, frozen sub-programs included.
        path: The file to write (``.json``; parent folders are created). It is
            written atomically.
        adapter: The adapter the program runs with; default what DSPy uses:
            ``dspy.settings.adapter`` or ``ChatAdapter()``. Must be exactly a
            ChatAdapter, JSONAdapter or dspy-ext ``PlainAdapter``.
        lm: The LM whose settings are recorded; default ``dspy.settings.lm``.
        metadata: Extra metadata (JSON values) merged over the defaults, e.g.
            ``{"optimizer": "MIPROv2", "seed": 0, "dev_score": 71.0}``.

    Returns:
        The artifact as loaded by the runtime (``artifact.path`` is set).

    Raises:
        ExportError: Something the template approach cannot represent; the
            message names the predictor (and field).

    Example:
        >>> with dspy.context(lm=make_lm("local"), adapter=PlainAdapter()):    # doctest: +SKIP
        ...     art = export(compiled, "sentiment.prompt.json", metadata={"optimizer": "LabeledFewShot"})
        >>> art.render("predict", input="A fine film.")                        # doctest: +SKIP
    """
    path = Path(path)
    if path.suffix.lower() == ".pkl":
        raise ExportError(f"{path}: artifacts are JSON; refusing to write a .pkl file")
    artifact = build_artifact(program, adapter=adapter, lm=lm, metadata=metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(artifact.to_json(), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    artifact.path = str(path)
    logger.info("exported %d predictor(s) to %s (sha256 %s)", len(artifact.names), path, artifact.content_hash[:12])
    return artifact
