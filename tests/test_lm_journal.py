"""The call journal: cold for the compile inside it, persistent, and replayed calls charged to the budget."""

from __future__ import annotations

import dspy
import pytest

from dspy_ext.lm.journal import ScopedCache, active_journal, journaled
from dspy_ext.lm.metering import BudgetExhausted, CallMeter, metering


def test_the_journal_is_cold_then_replays_charged_calls_and_restores_the_shared_cache(fake_lm, tmp_path) -> None:
    lm = fake_lm(lambda messages: f"answer to {messages[-1]['content']}", cache=True)
    shared = dspy.cache.shared if isinstance(dspy.cache, ScopedCache) else dspy.cache
    lm("q1")  # in the shared cache: never seen by the journal
    assert lm.engine.calls == 1

    first = CallMeter()
    with journaled(tmp_path / "calls.jsonl") as journal, metering(first):
        assert active_journal() is journal and dspy.cache.get.__self__ is journal
        lm("q1")  # cold: the journal has never seen it
        lm("q1")  # within one session a repeat is free, as with DSPy's cache
        lm("q2")
    assert active_journal() is None and dspy.cache.get.__self__ is shared
    assert lm.engine.calls == 3 and first.calls == 2 and journal.replayed_calls == 0

    second = CallMeter()
    with journaled(tmp_path / "calls.jsonl") as journal, metering(second):
        assert lm("q1") == ["answer to q1"] and lm("q1") == ["answer to q1"]
        lm("q2")
        lm("q3")  # new: reaches the model
    assert lm.engine.calls == 4
    assert journal.earlier_calls == 2 and journal.replayed_calls == 2
    assert second.calls == 3  # two replayed calls are charged once each, plus one new call
    assert second.total_tokens > 0  # with the tokens they cost when they were made


def test_a_replay_past_the_budget_raises_budget_exhausted(fake_lm, tmp_path) -> None:
    lm = fake_lm(lambda messages: "x", cache=True)
    with journaled(tmp_path / "calls.jsonl"):
        lm("q1")
        lm("q2")
    with journaled(tmp_path / "calls.jsonl"), metering(CallMeter(1)) as meter:
        lm("q1")
        with pytest.raises(Exception) as info:
            lm("q2")
    assert meter.calls == 1
    from dspy_ext.lm.metering import find_budget_exhausted

    assert isinstance(find_budget_exhausted(info.value), BudgetExhausted)


def test_a_torn_last_line_is_skipped(fake_lm, tmp_path) -> None:
    lm = fake_lm(lambda messages: "x", cache=True)
    path = tmp_path / "calls.jsonl"
    with journaled(path):
        lm("q1")
    with path.open("a") as f:
        f.write('{"key": "abc", "record": {"half')  # a write cut short by kill -9
    with journaled(path) as journal:
        lm("q1")
    assert journal.earlier_calls == 1 and journal.replayed_calls == 1 and lm.engine.calls == 1


def test_a_replayed_reply_carries_its_finish_reason(tmp_path) -> None:
    """A cut-off proposal replayed from the journal still reads as cut off (proposal guards rely on it)."""
    from dspy_ext.lm import FakeEngine
    from dspy_ext.lm.engine import Generation, pop_finish_reason

    class Cut(FakeEngine):
        def generate(self, request):
            g = super().generate(request)
            return Generation(g.text, g.input_tokens, g.output_tokens, "length")

    lm = dspy.LM("fake/journal-cut", engine=Cut(lambda messages: "a long proposal"), cache=True)
    with journaled(tmp_path / "calls.jsonl"):
        lm("q1")
        assert pop_finish_reason() == "length"
        lm("q1")  # a repeat in the same process
        assert pop_finish_reason() == "length"
    with journaled(tmp_path / "calls.jsonl"):
        lm("q1")  # replayed from the journal in a later process
        assert pop_finish_reason() == "length"
    assert lm.engine.calls == 1


def test_the_journal_is_scoped_to_its_context_not_the_process(fake_lm, tmp_path) -> None:
    """A thread that does not inherit the journaled block's context keeps DSPy's shared cache."""
    import threading

    lm = fake_lm(lambda messages: f"answer to {messages[-1]['content']}", cache=True)
    seen: list[object] = []
    with journaled(tmp_path / "calls.jsonl") as journal:
        other = threading.Thread(target=lambda: seen.append(active_journal()))
        other.start()
        other.join()
        lm("q1")
    assert seen == [None]
    assert journal.earlier_calls == 0 and len((tmp_path / "calls.jsonl").read_text().splitlines()) == 1
    lm("q1")  # outside the block: the shared cache, which never saw q1
    assert lm.engine.calls == 2
