"""How the engine layer retries transient LM errors and times out slow calls.

Every dspy-ext engine (:class:`~dspy_ext.lm.engine.MeteredEngine`) runs each
call under a :class:`CallPolicy`: a transient error (rate limit, timeout, 5xx,
dropped connection; see :func:`~dspy_ext.lm.errors.is_transient_error`) is
retried after an exponential backoff with jitter, up to ``max_retries`` times;
a call that runs past ``timeout`` seconds is abandoned and counts as a timeout.
Every try is reserved with the active call meters first, so retries count
against the budget: they cost as much as first tries.

The policy comes from, in this order: the innermost :func:`call_policy` block
(it follows DSPy's context into worker threads), the engine's own
``call_policy`` attribute, and :data:`DEFAULT_POLICY`.

Example:
    >>> with call_policy(CallPolicy(max_retries=5, timeout=30.0)):     # doctest: +SKIP
    ...     compiled = optimizer.compile(student, trainset=train, valset=val)
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import dspy

from dspy_ext.lm.errors import is_transient_error

__all__ = ["DEFAULT_POLICY", "CallPolicy", "active_call_policy", "call_policy"]

_SETTINGS_KEY = "dspy_ext_call_policy"


@dataclass(frozen=True)
class CallPolicy:
    """Retries and timeout of one LM call.

    Args:
        max_retries: Tries after the first one for a transient error (0: none).
        backoff: Seconds before the first retry; doubled for each further one.
        max_backoff: Upper bound of one wait, in seconds.
        jitter: Share of each wait that is random (0: fixed waits, 1: "full
            jitter", anywhere between 0 and the wait), so that threads hit by
            the same rate limit do not retry in lockstep.
        timeout: Seconds one try may take (``None``: no limit). A try that
            runs longer raises :class:`~dspy_ext.lm.errors.LMCallTimeout`,
            which is retried like any timeout.
        retry_on: Decides which errors are transient.

    Example:
        >>> CallPolicy(backoff=1.0, jitter=0.0).delay(2)
        4.0
    """

    max_retries: int = 3
    backoff: float = 1.0
    max_backoff: float = 30.0
    jitter: float = 0.5
    timeout: float | None = None
    retry_on: Callable[[BaseException], bool] = field(default=is_transient_error, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, got {self.max_retries!r}")
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.jitter, (int, float)) or not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        if self.timeout is not None and (
            not isinstance(self.timeout, (int, float)) or not math.isfinite(self.timeout) or self.timeout <= 0
        ):
            raise ValueError(f"timeout must be a positive number of seconds or None, got {self.timeout!r}")

    def delay(self, retry: int, error: BaseException | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based).

        ``backoff * 2**retry``, at most ``max_backoff``, of which the share
        ``jitter`` is drawn at random. A ``retry_after`` hint on the error (a
        provider's Retry-After) is honoured up to ``max_backoff``.

        Args:
            retry: 0 for the first retry.
            error: The error being retried.
            rng: Source of the jitter (default: a private, unseeded one).

        Returns:
            The wait in seconds.
        """
        base = min(self.max_backoff, self.backoff * (2.0 ** min(retry, 60)))
        draw = (rng or _JITTER).random()
        wait = base * (1.0 - self.jitter + self.jitter * draw)
        hint = getattr(error, "retry_after", None)
        if isinstance(hint, (int, float)) and not isinstance(hint, bool) and math.isfinite(hint) and hint > 0:
            wait = max(wait, min(float(hint), self.max_backoff))
        return wait


class _LockedRandom(random.Random):
    """A private RNG for jitter (never the global one, which DSPy programs draw from)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def random(self) -> float:
        with self._lock:
            return super().random()


_JITTER = _LockedRandom()

#: The policy of engines that set none: 3 retries after about 1, 2 and 4 seconds, no timeout.
DEFAULT_POLICY = CallPolicy()


def active_call_policy(engine: object | None = None) -> CallPolicy:
    """The policy in force for ``engine`` here: the innermost :func:`call_policy`, the engine's, or the default."""
    policy = dspy.settings.get(_SETTINGS_KEY)
    if policy is not None:
        return policy
    own = getattr(engine, "call_policy", None)
    return own if isinstance(own, CallPolicy) else DEFAULT_POLICY


@contextlib.contextmanager
def call_policy(policy: CallPolicy) -> Iterator[CallPolicy]:
    """Use ``policy`` for every dspy-ext engine call in the block (worker threads included).

    Args:
        policy: The retries and timeout to apply.

    Returns:
        A context manager yielding ``policy``.

    Example:
        >>> with call_policy(CallPolicy(timeout=20.0)):                # doctest: +SKIP
        ...     report = evaluator.evaluate(program, devset)
    """
    if not isinstance(policy, CallPolicy):
        raise TypeError(f"expected a CallPolicy, got {type(policy).__name__}")
    with dspy.context(**{_SETTINGS_KEY: policy}):
        yield policy
