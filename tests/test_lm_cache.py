"""A private response cache: cold for the work inside it, persistent across re-runs, shared cache untouched."""

from __future__ import annotations

import dspy

from dspy_ext.lm.cache import private_cache


def test_private_cache_is_cold_persistent_and_restores_the_shared_one(fake_lm, tmp_path) -> None:
    lm = fake_lm(lambda messages: "an answer", cache=True)
    shared = dspy.cache

    lm("a question")  # cached in the shared cache
    assert lm.engine.calls == 1

    with private_cache(tmp_path / "cell") as private:
        assert dspy.cache is private
        lm("a question")  # the private cache has never seen it
        lm("a question")  # ... but now it has
    assert lm.engine.calls == 2
    assert dspy.cache is shared

    lm("a question")  # the shared cache still answers
    assert lm.engine.calls == 2

    with private_cache(tmp_path / "cell"):  # a re-run reads the same folder: free
        assert lm("a question") == ["an answer"]
    assert lm.engine.calls == 2

    with private_cache(tmp_path / "other"):  # another folder is cold again
        lm("a question")
    assert lm.engine.calls == 3
