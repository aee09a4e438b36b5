"""An adapter that small chat models can follow: plain, short messages and a lenient parse.

DSPy's ChatAdapter asks the model to write ``[[ ## field ## ]]`` markers and
JSONAdapter asks for JSON; a 135M-parameter model does neither, so both score
0% on it. :class:`PlainAdapter` renders a signature the way such a model was
instruction-tuned to see a task:

* system: the signature's instructions (plus, for several output fields, one
  line naming the fields to write, in order);
* user: one ``Prefix: value`` line per input field;
* assistant: for one output field just the value; for several, one
  ``Prefix: value`` line per field.

Demos become user/assistant turns. Parsing takes, for a single output field,
the first content line with an echoed prefix stripped; for several, the text
after each field's prefix, and falls back to the last line for a missing last
field (how small models end a chain of thought).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin

from dspy.adapters.base import Adapter
from dspy.adapters.utils import format_field_value, parse_value
from dspy.signatures.signature import Signature
from dspy.utils.exceptions import AdapterParseError

from dspy_ext.runtime import PlainReplyError, split_plain_reply


def field_prefix(signature: type[Signature], name: str) -> str:
    """The ``Prefix:`` label of a field (DSPy's prefix, e.g. ``"Input:"``)."""
    field = signature.fields[name]
    prefix = (field.json_schema_extra or {}).get("prefix") or f"{name}:"
    prefix = prefix.strip()
    return prefix if prefix.endswith(":") else prefix + ":"


def field_labels(signature: type[Signature], name: str) -> list[str]:
    """Labels a model may echo for a field, longest first."""
    prefix = field_prefix(signature, name)[:-1].strip()
    candidates = {prefix.lower(), name.lower(), name.replace("_", " ").lower()}
    return sorted(candidates, key=len, reverse=True)


class PlainAdapter(Adapter):
    """Render signatures as plain chat turns; parse replies leniently.

    Args:
        format_hint: For a single output field, add one system line asking for
            the value alone. Off by default: on SmolLM2-135M it did not lift
            zero-shot accuracy and cost 20 points on sentiment with 3 demos.
        fill_missing: Values for output fields a reply may leave out, e.g.
            ``{"proposed_prefix_for_output_field": ""}`` for COPRO's proposer,
            whose second field a small model never writes. Without an entry a
            missing field is a parse error.
        **kwargs: Passed to ``dspy.Adapter``.

    Example:
        >>> dspy.configure(lm=make_lm("local"), adapter=PlainAdapter())  # doctest: +SKIP
        >>> dspy.Predict("input -> output")(input="cats")                 # doctest: +SKIP
    """

    def __init__(self, format_hint: bool = False, fill_missing: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.format_hint = format_hint
        self.fill_missing = dict(fill_missing or {})

    # ---- rendering -----------------------------------------------------------------
    def format_field_description(self, signature: type[Signature]) -> str:
        return ""

    def format_field_structure(self, signature: type[Signature]) -> str:
        outputs = list(signature.output_fields)
        if len(outputs) == 1:
            if not self.format_hint:
                return ""
            return f"Reply with the {outputs[0].replace('_', ' ')} only."
        lines = ", then ".join(f"'{field_prefix(signature, name)} ...'" for name in outputs)
        return f"Reply with one line per field: {lines}."

    def format_task_description(self, signature: type[Signature]) -> str:
        return (signature.instructions or "").strip()

    def format_system_message(self, signature: type[Signature]) -> str:
        parts = [self.format_task_description(signature), self.format_field_structure(signature)]
        return "\n".join(part for part in parts if part)

    def format_user_message_content(
        self,
        signature: type[Signature],
        inputs: dict[str, Any],
        prefix: str = "",
        suffix: str = "",
        main_request: bool = False,
    ) -> str:
        lines = [prefix] if prefix else []
        for name, field in signature.input_fields.items():
            if name in inputs and inputs[name] is not None:
                lines.append(f"{field_prefix(signature, name)} {format_field_value(field, inputs[name])}")
        if suffix:
            lines.append(suffix)
        return "\n".join(lines)

    def format_assistant_message_content(
        self,
        signature: type[Signature],
        outputs: dict[str, Any],
        missing_field_message: str | None = None,
    ) -> str:
        names = list(signature.output_fields)
        values = {
            name: format_field_value(signature.output_fields[name], outputs[name])
            if outputs.get(name) is not None
            else (missing_field_message or "")
            for name in names
        }
        if len(names) == 1:
            return str(values[names[0]])
        return "\n".join(f"{field_prefix(signature, name)} {values[name]}" for name in names)

    # ---- parsing -------------------------------------------------------------------
    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        names = list(signature.output_fields)
        labels = {name: field_labels(signature, name) for name in names}
        try:
            try:
                raw = split_plain_reply(completion, names, labels)
            except PlainReplyError as exc:
                # Drop the fillable fields the reply lacks and read the rest again.
                fill = [n for n in names if n in self.fill_missing and n not in exc.partial]
                if not fill or not exc.missing:
                    raise
                raw = split_plain_reply(completion, [n for n in names if n not in fill], labels)
                raw.update({n: self.fill_missing[n] for n in fill})
        except PlainReplyError as exc:
            problem = str(exc)
            if exc.missing:
                problem += "; expected lines starting with " + ", ".join(field_prefix(signature, n) for n in names)
            raise AdapterParseError(
                type(self).__name__,
                signature,
                completion,
                problem[0].upper() + problem[1:] + ".",
                parsed_result=exc.partial or None,
            ) from None
        parsed: dict[str, Any] = {}
        for name in names:
            try:
                parsed[name] = self._coerce(raw[name], signature.output_fields[name].annotation)
            except Exception as exc:  # pydantic / json errors: name the field
                raise AdapterParseError(
                    type(self).__name__,
                    signature,
                    completion,
                    f"Field '{name}' could not be read as {signature.output_fields[name].annotation}: {exc}",
                    parsed_result=dict(parsed),
                ) from exc
        return parsed

    @staticmethod
    def _coerce(value: str, annotation: Any) -> Any:
        if annotation is str:
            return value
        if get_origin(annotation) is Literal:
            for option in get_args(annotation):
                if str(option).lower() == value.strip().strip("'\".").lower():
                    return option
        return parse_value(value, annotation)
