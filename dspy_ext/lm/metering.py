"""Thread-safe LM-call and token accounting, with an optional hard call budget.

DSPy's ``track_usage`` loses counts under threads (each worker gets a private
copy of the tracker), so dspy-ext counts where the call really happens: in the
engine. An engine asks every *active* meter for permission before it calls the
model and reports the usage afterwards. Meters are activated with
:func:`metering`, which stores them in ``dspy.settings`` so that they follow
DSPy's own context propagation into worker threads.

Example:
    >>> meter = CallMeter(max_calls=100)
    >>> with metering(meter):
    ...     program(input="hello")          # doctest: +SKIP
    >>> meter.calls, meter.total_tokens     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback

logger = logging.getLogger(__name__)

_SETTINGS_KEY = "dspy_ext_meters"

#: The role of the LM calls made in the current context: ``"task"`` (the program's own calls) or
#: ``"prompt"`` (calls that write instructions); meters count each role apart.
_role: contextvars.ContextVar[str] = contextvars.ContextVar("dspy_ext_lm_role", default="task")

#: Failed tries in a row after which a compile's meter stops further calls: the model stopped answering
#: (a 20% fault rate gives 12 in a row with odds of about 4e-9; a dead endpoint gets there in 3 calls' retries).
MAX_FAILURES_IN_A_ROW = 12

#: The roles a meter reports apart, in report order.
ROLES = ("task", "prompt")


class BudgetExhausted(RuntimeError):
    """Raised by an engine when a call would exceed a meter's ``max_calls``."""

    def __init__(self, max_calls: int) -> None:
        super().__init__(f"LM-call budget of {max_calls} calls is used up")
        self.max_calls = max_calls


class CostCapReached(BudgetExhausted):
    """Raised by an engine when a meter's ``max_cost`` (USD) is spent: the dollar side of the budget."""

    def __init__(self, max_cost: float) -> None:
        RuntimeError.__init__(self, f"LM cost cap of ${max_cost:g} is reached")
        self.max_calls = None
        self.max_cost = max_cost


class ModelUnavailable(BudgetExhausted):
    """Raised by an engine when the model failed every try of too many calls in a row: it stopped answering.

    A compile stops on it as on a used-up budget, with the best program so far.
    """

    def __init__(self, failures: int, last_error: str | None, *, out: Any = None) -> None:
        cause = f"; last: {last_error}" if last_error else ""
        kept = f"; the best program so far is in {out}" if out is not None else ""
        RuntimeError.__init__(self, f"the model stopped answering ({failures} failed tries in a row{cause}){kept}")
        self.max_calls = None
        self.failures = failures
        self.last_error = last_error
        self.out = out


@dataclass(frozen=True)
class Price:
    """What a model charges, in USD per million tokens (a served model's price is yours to declare).

    Example:
        >>> Price(input_per_1m=0.15, output_per_1m=0.6).cost(1_000, 500)
        0.00045
    """

    input_per_1m: float
    output_per_1m: float

    def __post_init__(self) -> None:
        for name in ("input_per_1m", "output_per_1m"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"price {name} must be a number >= 0, got {value!r}")

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_1m + output_tokens * self.output_per_1m) / 1e6


@dataclass(frozen=True)
class UsageSnapshot:
    """An immutable copy of a meter's counters."""

    calls: int = 0
    failed_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    unpriced_calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def usd(self) -> float | None:
        """Dollars spent, or ``None`` when a call's price is unknown (never reported as 0)."""
        return None if self.unpriced_calls else round(self.cost, 6)

    def __sub__(self, other: UsageSnapshot) -> UsageSnapshot:
        return UsageSnapshot(
            self.calls - other.calls,
            self.failed_calls - other.failed_calls,
            self.input_tokens - other.input_tokens,
            self.output_tokens - other.output_tokens,
            self.cost - other.cost,
            self.unpriced_calls - other.unpriced_calls,
        )


class _Tally:
    """Mutable counters of one meter (or of one role of it); guarded by the meter's lock."""

    __slots__ = ("calls", "cost", "failed", "input_tokens", "output_tokens", "unpriced")

    def __init__(self) -> None:
        self.calls = self.failed = self.input_tokens = self.output_tokens = self.unpriced = 0
        self.cost = 0.0

    def add(self, input_tokens: int | None, output_tokens: int | None, failed: bool, cost: float | None) -> None:
        self.input_tokens += input_tokens or 0
        self.output_tokens += output_tokens or 0
        self.failed += int(failed)
        if cost is None:
            self.unpriced += int(not failed)
        else:
            self.cost += cost

    def snapshot(self) -> UsageSnapshot:
        return UsageSnapshot(self.calls, self.failed, self.input_tokens, self.output_tokens, self.cost, self.unpriced)


class CallMeter:
    """Counts LM calls, tokens and dollars, in all and per role; optionally refuses calls past its caps.

    A call is *reserved* before the engine runs it, so the cap holds exactly
    even when several threads call at once. A call that fails still counts: the
    model did the work (or the provider billed it). Each call is also counted
    under the role of the context it runs in (:func:`lm_role`: ``"task"`` or
    ``"prompt"``), so a report can split the task model's spend from the prompt model's.

    Args:
        max_calls: Hard cap on calls made while this meter is active. ``None``
            means unlimited.
        max_cost: Hard cap in USD: no call starts once this much is spent (calls
            already in flight finish, so a run can pass the cap by at most their
            cost). A call of unknown price counts as 0 toward it.
        max_failures_in_a_row: Circuit breaker: no call starts once this many tries in a row
            have failed (:class:`ModelUnavailable`); one answered try resets the count.
            ``None``: no breaker.
    """

    def __init__(
        self,
        max_calls: int | None = None,
        *,
        max_cost: float | None = None,
        max_failures_in_a_row: int | None = None,
    ) -> None:
        if max_calls is not None and max_calls < 0:
            raise ValueError(f"max_calls must be >= 0, got {max_calls}")
        if max_cost is not None and not max_cost >= 0:
            raise ValueError(f"max_cost must be >= 0, got {max_cost}")
        if max_failures_in_a_row is not None and max_failures_in_a_row < 1:
            raise ValueError(f"max_failures_in_a_row must be >= 1, got {max_failures_in_a_row}")
        self.max_calls = max_calls
        self.max_cost = max_cost
        self.max_failures_in_a_row = max_failures_in_a_row
        self._lock = threading.Lock()
        self._total = _Tally()
        self._roles: dict[str, _Tally] = {}
        self._failures_in_a_row = 0
        self._last_error: str | None = None
        #: Why the circuit breaker stopped further calls (``None``: it did not).
        self.outage: ModelUnavailable | None = None

    def _tallies(self) -> tuple[_Tally, _Tally]:
        role = _role.get()
        tally = self._roles.get(role)
        if tally is None:
            tally = self._roles[role] = _Tally()
        return self._total, tally

    def reserve(self) -> None:
        """Claim one call; raise :class:`BudgetExhausted` (or :class:`CostCapReached`,
        :class:`ModelUnavailable`) if none is left."""
        with self._lock:
            if self.max_calls is not None and self._total.calls >= self.max_calls:
                raise BudgetExhausted(self.max_calls)
            if self.max_cost is not None and self._total.cost >= self.max_cost:
                raise CostCapReached(self.max_cost)
            limit = self.max_failures_in_a_row
            if limit is not None and self._failures_in_a_row >= limit:
                if self.outage is None:
                    self.outage = ModelUnavailable(self._failures_in_a_row, self._last_error)
                    logger.warning("%s: no further LM call is made", self.outage)
                raise self.outage
            for tally in self._tallies():
                tally.calls += 1

    def release(self) -> None:
        """Give back a reservation that never reached the model."""
        with self._lock:
            for tally in self._tallies():
                tally.calls -= 1

    def record(
        self,
        input_tokens: int | None,
        output_tokens: int | None,
        *,
        failed: bool = False,
        cost: float | None = 0.0,
        error: BaseException | None = None,
    ) -> None:
        """Add the usage of a finished (reserved) call; ``cost=None`` marks a call of unknown price.

        ``error`` is given for a failed try the model did not answer (a refused or dropped
        connection, 429, 5xx; not a timeout, which a busy server gives too): those count toward the circuit breaker, and the last one is named by
        :class:`ModelUnavailable`. Any answer, an error reply such as a context overflow included,
        closes the breaker again.
        """
        with self._lock:
            for tally in self._tallies():
                tally.add(input_tokens, output_tokens, failed, cost)
            if failed and error is not None:
                self._failures_in_a_row += 1
                if error is not None:
                    first_line = (str(error).splitlines() or [""])[0][:160]
                    self._last_error = f"{type(error).__name__}: {first_line}"
            else:
                self._failures_in_a_row = 0

    @property
    def calls(self) -> int:
        return self._total.calls

    @property
    def total_tokens(self) -> int:
        return self._total.input_tokens + self._total.output_tokens

    @property
    def remaining(self) -> int | None:
        """Calls left before the cap, or ``None`` when there is no cap."""
        return None if self.max_calls is None else max(0, self.max_calls - self._total.calls)

    @property
    def exhausted(self) -> bool:
        return self.max_calls is not None and self._total.calls >= self.max_calls

    def snapshot(self) -> UsageSnapshot:
        with self._lock:
            return self._total.snapshot()

    def by_role(self) -> dict[str, UsageSnapshot]:
        """The counters per role (``"task"`` and ``"prompt"`` always present, zero when unused)."""
        with self._lock:
            shown = {role: self._roles.get(role, _Tally()).snapshot() for role in ROLES}
            shown.update({role: t.snapshot() for role, t in self._roles.items() if role not in shown})
            return shown

    def __deepcopy__(self, memo: dict) -> CallMeter:
        # DSPy deep-copies settings for worker threads; a meter must stay shared.
        return self


def reserve_all(meters: tuple[CallMeter, ...]) -> tuple[CallMeter, ...]:
    """Reserve one call with every meter in ``meters``, all or none.

    Raises:
        BudgetExhausted: A meter is full (no meter keeps a reservation).
    """
    reserved: list[CallMeter] = []
    try:
        for meter in meters:
            meter.reserve()
            reserved.append(meter)
    except BaseException:
        for meter in reserved:
            meter.release()
        raise
    return meters


@contextlib.contextmanager
def lm_role(role: str) -> Iterator[None]:
    """Count the LM calls made in this block (and in threads it starts with the context) under ``role``.

    Example:
        >>> with lm_role("prompt"):
        ...     proposal = propose(...)   # doctest: +SKIP
    """
    token = _role.set(role)
    try:
        yield
    finally:
        _role.reset(token)


class _RoleCallback(BaseCallback):
    """Counts every call of the LM it is attached to under one role (see :func:`with_role`)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self._tokens: dict[str, contextvars.Token[str]] = {}

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._tokens[call_id] = _role.set(self.role)

    def on_lm_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
        token = self._tokens.pop(call_id, None)
        if token is not None:
            _role.reset(token)


def with_role(lm: dspy.BaseLM | None, role: str) -> dspy.BaseLM | None:
    """A copy of ``lm`` whose calls are counted under ``role`` wherever it runs (same engine, same cache key).

    For optimizers that call a prompt model of their own (DSPy's MIPROv2, COPRO, GEPA, SIMBA):
    ``MIPROv2(prompt_model=with_role(lm, "prompt"))`` lets a meter split their spend by role.
    ``None`` stays ``None``.
    """
    if lm is None:
        return None
    tagged = lm.copy()
    tagged.callbacks = [*(c for c in tagged.callbacks if not isinstance(c, _RoleCallback)), _RoleCallback(role)]
    return tagged


def current_role() -> str:
    """The role the LM calls of this context are counted under (``"task"`` unless :func:`lm_role` says)."""
    return _role.get()


def active_meters() -> tuple[CallMeter, ...]:
    """The meters active in the current context, outermost first."""
    return tuple(dspy.settings.get(_SETTINGS_KEY) or ())


@contextlib.contextmanager
def metering(meter: CallMeter) -> Iterator[CallMeter]:
    """Activate ``meter`` (in addition to any outer meters) for a block.

    Args:
        meter: The meter that should see every engine call made in the block,
            including calls made from DSPy worker threads started inside it.

    Returns:
        A context manager yielding ``meter``.
    """
    with dspy.context(**{_SETTINGS_KEY: active_meters() + (meter,)}):
        yield meter


@contextlib.contextmanager
def without_meters() -> Iterator[None]:
    """A block that sees no meter of the blocks around it (for code that copies DSPy's settings, which
    cannot copy a live meter); an LM call made in it is counted by none of them."""
    with dspy.context(**{_SETTINGS_KEY: ()}):
        yield


def find_budget_exhausted(exc: BaseException | None) -> BudgetExhausted | None:
    """Return the :class:`BudgetExhausted` behind ``exc``, if any.

    DSPy wraps engine exceptions in its own LM errors, so the original is
    looked up along ``__cause__``/``__context__``.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, BudgetExhausted):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
