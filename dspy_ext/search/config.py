"""Optimizer settings, written once: each optimizer's config model holds its defaults, bounds and tuning ranges.

A config model is the single source of an optimizer's settings. The
optimizer's constructor validates its keyword arguments with it, the registry
validates ``--optimizer-config`` with it, and the Optuna space reads each
field's default search range from it (``json_schema_extra={"tune": ...}``, in
the space file's form: ``{"int": [low, high]}``, ``{"float": [low, high]}`` or a
list of choices).

Example:
    >>> class DemoConfig(OptimizerConfig):
    ...     top_k: int = tunable(3, ge=1, tune={"int": [2, 4]})
    >>> DemoConfig.resolve({"top_k": 5}).top_k
    5
    >>> DemoConfig.resolve({"top_k": 0}, name="demo")
    Traceback (most recent call last):
    ...
    ValueError: invalid config for optimizer 'demo': top_k: Input should be greater than or equal to 1 (valid keys: top_k)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

#: LM calls of one compile when nothing else is said (task and prompt model together).
DEFAULT_BUDGET = 400


def tunable(default: Any, *, tune: Any, **bounds: Any) -> Any:
    """A config field with ``default``, pydantic ``bounds`` (``ge``, ``le``, ...) and a default tuning range."""
    return Field(default=default, json_schema_extra={"tune": tune}, **bounds)


def distinct_demo_counts(counts: tuple[int, ...]) -> tuple[int, ...]:
    """``counts`` without repeats, in order; a count below 1 is an error (a config validator)."""
    if any(k < 1 for k in counts):
        raise ValueError(f"every demo count must be >= 1, got {list(counts)}")
    return tuple(dict.fromkeys(counts))


class OptimizerConfig(BaseModel):
    """Base of every optimizer's config: validated, defaults filled, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def resolve(cls, values: Mapping[str, Any] | None = None, *, name: str | None = None) -> OptimizerConfig:
        """Validate ``values`` and fill the defaults.

        Args:
            values: Settings by name (``None``: all defaults).
            name: The optimizer's name, for messages.

        Raises:
            ValueError: An unknown key or a bad value; the message names the optimizer, the key and the
                valid keys.
        """
        if values is not None and not isinstance(values, Mapping):
            raise ValueError(
                f"config for optimizer '{name or cls.__name__}' must be a mapping of settings, "
                f"got {type(values).__name__}"
            )
        try:
            return cls(**dict(values or {}))
        except ValidationError as exc:
            problems = "; ".join(
                # A key holding line breaks or control characters is shown escaped: one-line messages.
                f"{'.'.join(str(p) if str(p).isprintable() else repr(p) for p in err['loc']) or '(config)'}: "
                + ("unknown key" if err["type"] == "extra_forbidden" else err["msg"])
                for err in exc.errors()
            )
            valid = ", ".join(cls.model_fields)
            raise ValueError(
                f"invalid config for optimizer '{name or cls.__name__}': {problems} (valid keys: {valid})"
            ) from None

    @classmethod
    def tuning_ranges(cls) -> dict[str, Any]:
        """Each field's default tuning range (raw space-file form), for the fields that have one."""
        ranges = {}
        for key, field in cls.model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            if "tune" in extra:
                ranges[key] = extra["tune"]
        return ranges


class InstructionSearchConfig(OptimizerConfig):
    """Settings every dspy-ext instruction search shares (see :class:`~dspy_ext.search.InstructionSearch`).

    Attributes:
        steps: Search rounds after the initial candidates (each method sets its own default).
        minibatch_size: Training examples per search minibatch.
        max_bootstrapped_demos: Bootstrapped demos per predictor per demo set.
        max_labeled_demos: Labeled demos per predictor per demo set.
        num_demo_sets: Demo sets to build (the first is labeled-only).
        final_candidates: Instruction sets carried into the final selection.
        final_share: Share of the LM-call budget kept for the final selection.
        demo_start: Demo counts ``k`` of the class-balanced labeled draws raced against the free baseline
            (3 random labeled demos) before the search; the winner is the demo set every instruction is
            searched on (see :mod:`dspy_ext.search.demo_start`). Empty: start from the baseline's draw.
        demo_start_rows: Valset rows of that race (fewer when ``demo_start_share`` cannot pay for them).
        demo_start_share: Largest share of the search phase's calls the race may take.
    """

    steps: int = Field(default=4, ge=0)
    minibatch_size: int = tunable(10, ge=1, tune=[5, 10])
    max_bootstrapped_demos: int = tunable(2, ge=0, tune={"int": [0, 2]})
    max_labeled_demos: int = tunable(3, ge=0, tune={"int": [1, 4]})
    num_demo_sets: int = Field(default=3, ge=1)
    final_candidates: int = Field(default=3, ge=1)
    final_share: float = Field(default=0.35, ge=0.0, lt=1.0)
    demo_start: tuple[int, ...] = Field(default=(3, 8, 16))
    demo_start_rows: int = Field(default=20, ge=1)
    demo_start_share: float = Field(default=0.4, gt=0.0, lt=1.0)

    @field_validator("demo_start")
    @classmethod
    def _distinct_counts(cls, counts: tuple[int, ...]) -> tuple[int, ...]:
        return distinct_demo_counts(counts)
