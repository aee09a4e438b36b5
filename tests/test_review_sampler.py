"""What to show next: informative picks (checks and samples disagree) alternating with random ones."""

from __future__ import annotations

from dspy_ext.review import CheckSpec, NextItemSampler, ReviewStore, item_signals


def make_store() -> tuple[ReviewStore, dict[str, str]]:
    store = ReviewStore(":memory:")
    keys = {}
    for i in range(6):  # six calm inputs: one sample, a one-word output
        keys[f"calm{i}"] = store.add_output({"input": f"calm {i}"}, {"output": "positive"}, prompt_version="v1")
    keys["long"] = store.add_output({"input": "long"}, {"output": "it is a positive review"}, prompt_version="v1")
    # One input whose three samples disagree (two distinct outputs).
    keys["split_a"] = store.add_output({"input": "split"}, {"output": "positive"}, prompt_version="v1", sample_index=0)
    keys["split_b"] = store.add_output({"input": "split"}, {"output": "negative"}, prompt_version="v1", sample_index=1)
    store.add_output({"input": "split"}, {"output": "positive"}, prompt_version="v1", sample_index=2)
    store.add_criterion("short", check=CheckSpec.parse("max_words:1"))
    return store, keys


def test_signals_rank_check_failures_and_sample_disagreement() -> None:
    store, keys = make_store()
    signals = item_signals(store)
    # max_words:1 passes 8 of 9 items; the one it fails gets that pass rate as its score.
    assert abs(signals[keys["long"]].score - 8 / 9) < 1e-9
    assert "fails max_words:1" in signals[keys["long"]].reasons[0]
    # 3 samples, 2 distinct outputs: (2 - 1) / (3 - 1).
    assert signals[keys["split_a"]].score == 0.5 == signals[keys["split_b"]].score
    assert keys["calm0"] not in signals  # nothing informative about it
    store.set_grade(keys["split_a"], "good")
    store.set_grade(keys["split_b"], "bad", "wrong")
    # Sibling outputs graded both ways add to the score.
    assert item_signals(store)[keys["split_a"]].score == 1.0


def test_picks_alternate_informative_and_random() -> None:
    store, keys = make_store()
    items = store.items()
    signals = item_signals(store, items)
    sampler = NextItemSampler(seed=3)
    first, how = sampler.pick(items, 0, signals)
    assert (first.key, how) == (keys["long"], "informative")
    second, how = sampler.pick(items, 1, signals)
    assert how == "random"
    assert sampler.pick(items, 1, signals)[0].key == second.key  # reproducible for a seed and a pick number
    randoms = {sampler.pick(items, i, signals)[0].key for i in range(1, 200, 2)}
    assert len(randoms) >= 6  # random picks reach the calm items, not just the strange ones
    calm = [i for i in items if i.key not in signals]
    assert sampler.pick(calm, 0, signals) == (min(calm, key=lambda i: i.seq), "in order")
    assert sampler.pick([], 0, signals) == (None, "")
