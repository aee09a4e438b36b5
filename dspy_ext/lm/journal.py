"""A call journal: every LM reply of one compile, kept in its run folder, so an interrupted compile resumes.

:class:`CallJournal` stands in for DSPy's response cache while a compile runs
(:func:`journaled`). Every reply is appended to ``calls.jsonl`` in the run
folder (one JSON line, flushed and fsynced, so a ``kill -9`` loses at most the
calls in flight). When the same compile runs again, the calls it made before
are answered from the journal instead of the model, and each is *charged* to
the active call meters as the call it was: a resumed compile re-traces the
interrupted one exactly (same requests, same replies, same budget points) and
its total never exceeds ``max_lm_calls``. Within one process a repeated request
is free, as it is with DSPy's cache; a request first seen in an earlier process
costs one call, as it did then.

Only plain JSON records are journaled (what DSPy 3.4 stores for native
engines, dspy-ext's included); nothing is ever unpickled.

The metered calls that do not pass through DSPy's cache are journaled too
(:meth:`CallJournal.replay_call`, :meth:`CallJournal.record_call`): likelihood
scoring (``score``: one forward pass of an in-process engine) and the requests a
served engine sends itself (``served``: ``/completions`` scoring and probe,
``/chat/completions`` under a label schema). Unlike a chat reply, such a call is
not free when repeated within a process (it never was), so the journal keeps
every occurrence and a resumed compile replays as many occurrences of a request
as were made before, each charged as a chat replay is.

Rows of ``calls.jsonl`` (one JSON object a line):

* a chat reply (DSPy's cache record): ``{"key", "record", "usage"}``, the form of
  every journal so far;
* another call: ``{"kind", "key", "record", "usage"}``, ``kind`` being ``"score"``
  or ``"served"``. ``usage`` is ``{"input_tokens", "output_tokens", "cost"}``
  plus ``"failed": true`` for a refused request (replayed as a failed try). A
  reader that does not know ``kind`` keeps such a row under a key no chat
  request hashes to, so older versions still read the file.

The journal is scoped to the block's context, like the call meters: it is held
in ``dspy.settings`` (``dspy.context``), so it follows DSPy's own propagation
into worker threads and no other compile or thread of the process sees it.
DSPy 3.4 reads its response cache from the module attribute ``dspy.cache``, so
that attribute holds a :class:`ScopedCache` that answers from the journal of the
current context and from DSPy's own cache everywhere else.

Example:
    >>> with journaled("runs/ape-s0/calls.jsonl") as journal:          # doctest: +SKIP
    ...     compiled = optimizer.compile(student, trainset=train)
    >>> journal.replayed_calls                                           # doctest: +SKIP
    118
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
from dspy.clients.cache import Cache

from dspy_ext.lm.engine import note_finish_reason, pop_cost
from dspy_ext.lm.metering import active_meters, reserve_all

logger = logging.getLogger(__name__)


class CallJournal(Cache):
    """DSPy's response cache, backed by an append-only JSONL file, that charges replayed calls to the budget.

    Args:
        path: The journal file (created with its folder if missing).

    Attributes:
        replayed_calls: Calls answered from the journal's earlier sessions (each charged once).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(enable_disk_cache=False, enable_memory_cache=True, disk_cache_dir=None)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._earlier: dict[str, dict[str, int | None]] = {}  # key -> usage of a call made in an earlier session
        # key -> the (record, usage) of each earlier occurrence of a non-chat call not replayed yet, in order
        self._earlier_calls: dict[str, collections.deque[tuple[Any, dict[str, Any]]]] = {}
        self._charged: set[str] = set()
        self._write_lock = threading.Lock()
        self.replayed_calls = 0
        self._load()
        self._earlier_other = sum(len(queue) for queue in self._earlier_calls.values())
        self._file = self.path.open("a", encoding="utf-8")

    def _load(self) -> None:
        if not self.path.exists():
            return
        _cut_torn_tail(self.path)
        torn = 0
        with self.path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    entry = json.loads(line)
                    key, record = entry["key"], entry["record"]
                    kind = entry.get("kind")
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                    torn += 1  # the line being written when the process died
                    continue
                if kind is not None:
                    queue = self._earlier_calls.setdefault(key, collections.deque())
                    queue.append((record, entry.get("usage") or {}))
                    continue
                self.memory_cache[key] = record
                self._earlier[key] = entry.get("usage") or {}
        if torn:
            logger.warning("%s: skipped %d unreadable line(s) (a write cut short by a crash)", self.path, torn)
        logger.info("%s: %d earlier call(s) to replay", self.path, len(self._earlier))

    @property
    def earlier_calls(self) -> int:
        """Calls the journal held when it was opened (distinct chat requests, every other call)."""
        return len(self._earlier) + self._earlier_other

    # ---- calls outside DSPy's cache: likelihood scoring, a served engine's own requests -----------
    def call_key(self, kind: str, request: dict[str, Any]) -> str:
        """The journal key of a call of ``kind`` (``"score"``, ``"served"``): a hash of the request.

        ``request`` must hold everything that changes the answer (model, prompt or messages, parameters).
        """
        return self.cache_key({"dspy_ext_call": kind, **request})

    def replay_call(self, key: str) -> Any | None:
        """The record of the next earlier occurrence of ``key`` not replayed yet, charged to the active meters.

        ``None`` when every earlier occurrence was replayed (or there was none): the call is made, and
        recorded with :meth:`record_call`.

        Raises:
            BudgetExhausted: A meter is full (the occurrence stays to be replayed).
        """
        with self._lock:
            queue = self._earlier_calls.get(key)
            if not queue:
                return None
            record, usage = queue.popleft()
        try:
            _charge(usage, failed=bool(usage.get("failed")))
        except BaseException:
            with self._lock:
                queue.appendleft((record, usage))
            raise
        with self._lock:
            self.replayed_calls += 1
        return record

    def record_call(self, key: str, kind: str, record: Any, usage: dict[str, Any]) -> None:
        """Append one call of ``kind`` that reached the model (``usage``: what the meters were charged)."""
        try:
            line = json.dumps(
                {"kind": kind, "key": key, "record": record, "usage": usage}, ensure_ascii=False, allow_nan=False
            )
        except (TypeError, ValueError):
            logger.debug("not journaled (not plain JSON): a %s call", kind)
            return
        self._append(line)

    def get(self, request: dict[str, Any], ignored_args_for_cache_key: list[str] | None = None) -> Any:
        try:
            key = self.cache_key(request, ignored_args_for_cache_key)
        except Exception:
            return None
        record = super().get(request, ignored_args_for_cache_key)
        if record is None:
            return None
        # A replayed reply must read like the original one, cut-off flag included (proposal guards use it).
        note_finish_reason(_finish_reason(record))
        if key not in self._earlier:
            return record
        with self._lock:
            first = key not in self._charged
            if first:
                self._charged.add(key)
        if first:
            try:
                _charge(self._earlier[key])
            except BaseException:
                with self._lock:
                    self._charged.discard(key)
                raise
            self.replayed_calls += 1
        return record

    def put(
        self,
        request: dict[str, Any],
        value: Any,
        ignored_args_for_cache_key: list[str] | None = None,
        enable_memory_cache: bool = True,
    ) -> None:
        try:
            key = self.cache_key(request, ignored_args_for_cache_key)
            line = json.dumps(
                {"key": key, "record": value, "usage": {**_usage(value), "cost": pop_cost()}},
                ensure_ascii=False,
                allow_nan=False,
            )
        except (TypeError, ValueError):
            logger.debug("not journaled (not plain JSON): %r", type(value))
            return
        with self._lock:
            self.memory_cache[key] = value
        self._append(line)

    def _append(self, line: str) -> None:
        with self._write_lock:
            self._file.write(line + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._write_lock:
            self._file.close()

    def __deepcopy__(self, memo: dict) -> CallJournal:
        # DSPy may deep-copy settings for worker threads; the journal must stay one.
        return self


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line that a crash cut short (no newline), so the next record starts a line of its own.

    Appending after such a fragment would glue the next reply onto it, and that reply would be lost
    on the following resume.
    """
    with path.open("rb+") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return
        file.seek(size - 1)
        if file.read(1) == b"\n":
            return
        end = size
        while end > 0:
            start = max(0, end - 65536)
            file.seek(start)
            newline = file.read(end - start).rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        logger.warning("%s: dropped a torn last line of %d bytes (a write cut short by a crash)", path, size - end)
        file.truncate(end)


def _finish_reason(record: Any) -> str | None:
    responses = record.get("responses") if isinstance(record, dict) else None
    if isinstance(responses, list) and responses and isinstance(responses[0], dict):
        reason = responses[0].get("finish_reason")
        return reason if isinstance(reason, str) else None
    return None


def _usage(record: Any) -> dict[str, int | None]:
    usage = record.get("usage") if isinstance(record, dict) else None
    if not isinstance(usage, dict):
        return {}
    get = lambda *names: next((usage[n] for n in names if isinstance(usage.get(n), int)), None)
    return {
        "input_tokens": get("input_tokens", "prompt_tokens"),
        "output_tokens": get("output_tokens", "completion_tokens"),
    }


def _charge(usage: dict[str, Any], *, failed: bool = False) -> None:
    """Count one replayed call on every active meter, all or none (a full meter raises ``BudgetExhausted``).

    ``failed``: the call was a refused try (charged as one, as when it was made).
    """
    for meter in reserve_all(active_meters()):
        if failed:
            meter.record(None, None, failed=True)
        else:
            meter.record(usage.get("input_tokens"), usage.get("output_tokens"), cost=usage.get("cost"))


_SETTINGS_KEY = "dspy_ext_journal"


def active_journal() -> CallJournal | None:
    """The call journal of the current context (see :func:`journaled`), or ``None``."""
    return dspy.settings.get(_SETTINGS_KEY)


class ScopedCache:
    """What ``dspy.cache`` holds once a journal was opened: the current context's journal, else DSPy's cache.

    Every attribute (``get``, ``put``, ``cache_key``, ``reset_memory_cache`` ...) is that of the
    cache in charge of the calling context, so code outside a :func:`journaled` block sees DSPy's
    cache exactly as before.

    Args:
        shared: The cache that was in ``dspy.cache`` (``None``: DSPy's default, built when first needed).
    """

    def __init__(self, shared: Cache | None) -> None:
        self._shared = shared

    @property
    def shared(self) -> Cache:
        """DSPy's own response cache, the one used outside journaled blocks."""
        if self._shared is None:
            from dspy.clients import _get_dspy_cache

            with dspy._cache_lock:
                if self._shared is None:
                    self._shared = _get_dspy_cache()
        return self._shared

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_shared":
            raise AttributeError(name)
        journal = active_journal()
        return getattr(journal if journal is not None else self.shared, name)


def _route_dspy_cache() -> None:
    """Make ``dspy.cache`` a :class:`ScopedCache` around whatever cache it holds (once; it stays)."""
    with dspy._cache_lock:
        current = dspy.__dict__.get("cache")  # not `dspy.cache`: reading it would build the default cache
        if not isinstance(current, ScopedCache):
            dspy.cache = ScopedCache(current)


@contextlib.contextmanager
def journaled(path: str | os.PathLike[str]) -> Iterator[CallJournal]:
    """Answer the LM calls of this block (and of the DSPy worker threads it starts) from a :class:`CallJournal`.

    The LM must have its cache on (``dspy.LM(..., cache=True)``) for DSPy to consult it. The
    journal replaces DSPy's response cache for this block's context only: other threads and
    compiles keep DSPy's cache.
    """
    journal = CallJournal(path)
    _route_dspy_cache()
    try:
        with dspy.context(**{_SETTINGS_KEY: journal}):
            yield journal
    finally:
        journal.close()
