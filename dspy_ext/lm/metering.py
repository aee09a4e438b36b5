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
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import dspy

_SETTINGS_KEY = "dspy_ext_meters"


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


class CallMeter:
    """Counts LM calls and tokens; optionally refuses calls past ``max_calls``.

    A call is *reserved* before the engine runs it, so the cap holds exactly
    even when several threads call at once. A call that fails still counts: the
    model did the work (or the provider billed it).

    Args:
        max_calls: Hard cap on calls made while this meter is active. ``None``
            means unlimited.
        max_cost: Hard cap in USD: no call starts once this much is spent (calls
            already in flight finish, so a run can pass the cap by at most their
            cost). A call of unknown price counts as 0 toward it.
    """

    def __init__(self, max_calls: int | None = None, *, max_cost: float | None = None) -> None:
        if max_calls is not None and max_calls < 0:
            raise ValueError(f"max_calls must be >= 0, got {max_calls}")
        if max_cost is not None and not max_cost >= 0:
            raise ValueError(f"max_cost must be >= 0, got {max_cost}")
        self.max_calls = max_calls
        self.max_cost = max_cost
        self._lock = threading.Lock()
        self._calls = 0
        self._failed = 0
        self._input_tokens = 0
        self._output_tokens = 0
        self._cost = 0.0
        self._unpriced = 0

    def reserve(self) -> None:
        """Claim one call; raise :class:`BudgetExhausted` (or :class:`CostCapReached`) if none is left."""
        with self._lock:
            if self.max_calls is not None and self._calls >= self.max_calls:
                raise BudgetExhausted(self.max_calls)
            if self.max_cost is not None and self._cost >= self.max_cost:
                raise CostCapReached(self.max_cost)
            self._calls += 1

    def release(self) -> None:
        """Give back a reservation that never reached the model."""
        with self._lock:
            self._calls -= 1

    def record(
        self, input_tokens: int | None, output_tokens: int | None, *, failed: bool = False, cost: float | None = 0.0
    ) -> None:
        """Add the usage of a finished (reserved) call; ``cost=None`` marks a call of unknown price."""
        with self._lock:
            self._input_tokens += input_tokens or 0
            self._output_tokens += output_tokens or 0
            self._failed += int(failed)
            if cost is None:
                self._unpriced += int(not failed)
            else:
                self._cost += cost

    @property
    def calls(self) -> int:
        return self._calls

    @property
    def total_tokens(self) -> int:
        return self._input_tokens + self._output_tokens

    @property
    def remaining(self) -> int | None:
        """Calls left before the cap, or ``None`` when there is no cap."""
        return None if self.max_calls is None else max(0, self.max_calls - self._calls)

    @property
    def exhausted(self) -> bool:
        return self.max_calls is not None and self._calls >= self.max_calls

    def snapshot(self) -> UsageSnapshot:
        with self._lock:
            return UsageSnapshot(
                self._calls, self._failed, self._input_tokens, self._output_tokens, self._cost, self._unpriced
            )

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
