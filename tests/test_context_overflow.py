"""Prompts longer than the context window: the engine, the evaluator, the runtime and the demo-set check.

Unit tests use the fake engine's simulated window (one token per word); the
embedded tests run SmolLM2 through llama.cpp with its real tokenizer.
"""

from __future__ import annotations

import copy
import itertools
import random

import dspy
import pytest

from dspy_ext import compile_record, runtime
from dspy_ext.adapters import PlainAdapter
from dspy_ext.evaluation import ErrorKind, Evaluator
from dspy_ext.export.exporter import build_artifact
from dspy_ext.lm import CallMeter, ContextOverflowError, FakeEngine, metering
from dspy_ext.search.context import demo_set_context_fit

_ids = itertools.count()


def fake_lm(window: int | None, responder=lambda messages: "ok") -> dspy.LM:
    return dspy.LM(f"fake/context-{next(_ids)}", engine=FakeEngine(responder, context_window=window), cache=False)


def exact(example, prediction, trace=None) -> bool:
    return example.output == prediction.output


def rows_with_one_long_input(long_words: int) -> list[dspy.Example]:
    inputs = ["a short one", "another short input", " ".join(["word"] * long_words), "the last short input"]
    return [dspy.Example(input=text, output="ok").with_inputs("input") for text in inputs]


# ---- the message is the same everywhere ----------------------------------------------------------


def test_engine_and_runtime_errors_read_the_same() -> None:
    ours = ContextOverflowError(2301, 2048, reply_tokens=1, model="smollm2")
    theirs = runtime.ContextOverflowError(2301, 2048, reply_tokens=1, model="smollm2")
    assert str(ours) == str(theirs) == runtime.context_overflow_message(2301, 2048, reply_tokens=1, model="smollm2")
    assert "2301 tokens" in str(ours) and "2048 tokens" in str(ours) and "254 more" in str(ours)
    assert "\n" not in str(ours)
    assert isinstance(ours, runtime.ContextOverflowError)  # one meaning: the runtime's except catches the engine's
    assert (ours.prompt_tokens, ours.context_window) == (theirs.prompt_tokens, theirs.context_window) == (2301, 2048)


# ---- evaluator -------------------------------------------------------------------------------------


def test_an_overflowing_row_gets_its_own_error_class_and_the_others_are_scored() -> None:
    lm = fake_lm(window=60)
    evaluator = Evaluator(exact, num_threads=2, cache=False)
    meter = CallMeter()
    with dspy.context(lm=lm, adapter=PlainAdapter()), metering(meter):
        report = evaluator.evaluate(dspy.Predict("input -> output"), rows_with_one_long_input(200))

    overflow = report.rows[2]
    assert overflow.error is ErrorKind.CONTEXT and overflow.score is None
    assert overflow.message.startswith("context overflow: the prompt has 209 tokens + 1 reserved for the reply")
    assert "context window of 60 tokens" in overflow.message
    assert [r.score for i, r in enumerate(report.rows) if i != 2] == [1.0, 1.0, 1.0]
    assert report.score == 100.0  # left out of the mean, not a wrong answer
    assert report.errors["context_overflow"] == 1 and report.to_dict()["errors"]["context_overflow"] == 1
    assert meter.calls == 3 == lm.engine.calls  # refused before decoding: not charged


def test_without_a_window_nothing_overflows() -> None:
    lm = fake_lm(window=None)
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        report = Evaluator(exact, cache=False).evaluate(dspy.Predict("input -> output"), rows_with_one_long_input(5000))
    assert report.errors["context_overflow"] == 0 and len(report.scored) == 4


@pytest.mark.parametrize("window", [0, -3, 2.5, True])
def test_a_bad_simulated_window_is_refused(window) -> None:
    with pytest.raises(ValueError, match="context_window"):
        FakeEngine(lambda m: "ok", context_window=window)


# ---- the DSPy-free runtime ----------------------------------------------------------------------------


def words(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"].split()) for m in messages)


def test_runtime_check_counts_with_the_callers_tokenizer() -> None:
    messages = [{"role": "system", "content": "Answer."}, {"role": "user", "content": "Input: a fine film"}]
    assert runtime.check_context(messages, words, 10) == 5
    assert runtime.check_context(messages, words, 10, reply_tokens=5) == 5
    with pytest.raises(runtime.ContextOverflowError) as info:
        runtime.check_context(messages, words, 10, reply_tokens=6, model="m")
    assert str(info.value) == runtime.context_overflow_message(5, 10, reply_tokens=6, model="m")
    for bad in ({"context_window": 0}, {"reply_tokens": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            runtime.check_context(messages, words, **{"context_window": 10, **bad})
    with pytest.raises(ValueError, match="count_tokens"):
        runtime.check_context(messages, lambda m: "many", 10)


def test_exported_artifact_carries_the_window_and_checks_rendered_prompts() -> None:
    lm = fake_lm(window=40)
    program = dspy.Predict(dspy.Signature("input -> output", "Answer the request."))
    art = build_artifact(program, adapter=PlainAdapter(), lm=lm)
    assert art.lm["context_window"] == 40 and art.context_window == 40

    short = art.render("self", input="a fine film")
    assert art.check_context(short, words) == words(short)
    long = art.render("self", input=" ".join(["word"] * 100))
    with pytest.raises(runtime.ContextOverflowError) as info:
        art.check_context(long, words, reply_tokens=1)  # the fake engine, like llama.cpp, keeps 1 free
    # The same message the evaluator gives a row with this prompt on this model.
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        report = Evaluator(exact, cache=False).evaluate(
            program, [dspy.Example(input=" ".join(["word"] * 100), output="ok").with_inputs("input")]
        )
    engine_message = report.rows[0].message
    assert str(info.value) == engine_message  # same counts, same wording
    assert info.value.prompt_tokens == words(long)

    # Round trip through JSON, and an artifact without a window asks for one.
    loaded = runtime.loads(art.to_json())
    assert loaded.context_window == 40
    data = copy.deepcopy(art.data)
    del data["lm"]["context_window"]
    data["content_hash"] = runtime.compute_hash(data)
    with pytest.raises(ValueError, match="pass context_window"):
        runtime.PromptArtifact(data).check_context(short, words)
    assert runtime.PromptArtifact(data).check_context(short, words, context_window=1000) == words(short)


@pytest.mark.parametrize("window", [0, "4096", 1.5, True])
def test_a_malformed_window_in_an_artifact_is_refused(window) -> None:
    art = build_artifact(dspy.Predict("input -> output"), adapter=PlainAdapter(), lm=fake_lm(window=40))
    data = copy.deepcopy(art.data)
    data["lm"]["context_window"] = window
    data["content_hash"] = runtime.compute_hash(data)
    with pytest.raises(runtime.ArtifactError, match="lm.context_window"):
        runtime.validate(data)


# ---- will a demo set overflow? -----------------------------------------------------------------------------


def demo(i: int, words_in_input: int) -> dict[str, str]:
    return {"input": " ".join([f"w{i}"] * words_in_input), "output": "ok"}


def test_demo_set_fit_counts_with_the_engine_and_flags_a_bloated_set() -> None:
    lm = fake_lm(window=120)
    student = dspy.Predict(dspy.Signature("input -> output", "Answer the request."))
    train = [dspy.Example(input=" ".join(["x"] * n), output="ok").with_inputs("input") for n in (3, 5, 30, 8)]
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        small = demo_set_context_fit(student, {"self": (demo(1, 5), demo(2, 5))}, train)
        bloated = demo_set_context_fit(student, {"self": (demo(1, 50), demo(2, 50))}, train)

    assert small.fits and small.counted_by == "tokenizer" and small.message() == ""
    assert small.checked == 4 and small.example_index == 2  # the 30-word input gives the longest prompt
    assert not bloated.fits and bloated.context_window == 120
    assert bloated.overflowing >= 1 and bloated.prompt_tokens > 120
    assert "context overflow" in bloated.message()
    # The count is the engine's own: an evaluation of that prompt overflows exactly when the check says so.
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        program = dspy.Predict(dspy.Signature("input -> output", "Answer the request."))
        program.demos = [dspy.Example(**demo(1, 50)), dspy.Example(**demo(2, 50))]
        report = Evaluator(exact, cache=False).evaluate(program, train)
    assert report.errors["context_overflow"] == bloated.overflowing


def test_demo_set_fit_estimates_without_a_tokenizer_and_samples_with_the_rng() -> None:
    student = dspy.Predict("input -> output")
    train = [dspy.Example(input=" ".join(["word"] * n), output="ok").with_inputs("input") for n in range(1, 60)]
    fit = demo_set_context_fit(
        student,
        {"self": ()},
        train,
        lm=None,
        adapter=PlainAdapter(),
        context_window=50,
        sample_size=10,
        rng=random.Random(1),
    )
    assert fit.counted_by == "estimate" and fit.checked == 10
    again = demo_set_context_fit(
        student,
        {"self": ()},
        train,
        lm=None,
        adapter=PlainAdapter(),
        context_window=50,
        sample_size=10,
        rng=random.Random(1),
    )
    assert again == fit
    with pytest.raises(ValueError, match="sample_size"):
        demo_set_context_fit(student, {"self": ()}, train, adapter=PlainAdapter(), sample_size=0)


# ---- the embedded model ------------------------------------------------------------------------------------


@pytest.mark.embedded
def test_embedded_model_overflow_is_its_own_error_class_and_other_rows_are_scored(local_lm: dspy.LM) -> None:
    window = local_lm.engine.context_window
    long_text = " ".join(["tree"] * (window + 200))  # "tree" is one token; the chat template adds more
    examples = [
        dspy.Example(input=text, output=label).with_inputs("input")
        for text, label in [
            ("A gorgeous, witty, seductive movie.", "positive"),
            (long_text, "negative"),
            ("The plot is dull and the acting is wooden.", "negative"),
        ]
    ]
    program = dspy.Predict(dspy.Signature("input -> output", "Classify the sentiment as positive or negative."))
    meter = CallMeter()
    with dspy.context(lm=local_lm.copy(cache=False), adapter=PlainAdapter()), metering(meter):
        report = Evaluator(exact, cache=False).evaluate(program, examples)

    overflow = report.rows[1]
    assert overflow.error is ErrorKind.CONTEXT and overflow.score is None
    prompt_tokens = local_lm.engine.count_prompt_tokens(
        PlainAdapter().format(program.signature, [], {"input": long_text})
    )
    assert f"the prompt has {prompt_tokens} tokens" in overflow.message
    assert f"context window of {window} tokens" in overflow.message
    assert [r.error for r in (report.rows[0], report.rows[2])] == [None, None]
    assert all(r.prediction is not None and r.score is not None for r in (report.rows[0], report.rows[2]))
    assert report.errors["context_overflow"] == 1 and meter.calls == 2


@pytest.mark.embedded
def test_embedded_demo_set_fit_uses_the_model_tokenizer(local_lm: dspy.LM) -> None:
    student = dspy.Predict(dspy.Signature("input -> output", "Classify the sentiment."))
    train = [dspy.Example(input="A fine film.", output="positive").with_inputs("input")]
    window = local_lm.engine.context_window
    bloated = [{"input": " ".join(["tree"] * (window // 3)), "output": "positive"} for _ in range(4)]
    with dspy.context(lm=local_lm, adapter=PlainAdapter()):
        fits = demo_set_context_fit(student, {"self": ()}, train)
        overflows = demo_set_context_fit(student, {"self": tuple(bloated)}, train)
    assert fits.fits and fits.counted_by == "tokenizer" and 10 < fits.prompt_tokens < 100
    assert not overflows.fits and overflows.prompt_tokens > window


def test_a_search_never_adopts_a_demo_set_that_overflows_typical_inputs() -> None:
    """A 40-token window: the labeled set is trimmed until inputs fit, and every evaluated prompt fits."""
    from dspy_ext import APE

    from support.fake_world import BASELINE_INSTRUCTION, dataset, respond

    engine = FakeEngine(respond, context_window=40)
    lm = dspy.LM(f"fake/overflow-{next(_ids)}", engine=engine, cache=False)
    ape = APE(
        lambda ex, pred, trace=None: float(pred.output == ex.output),
        max_lm_calls=200,
        seed=0,
        steps=1,
        num_candidates=2,
        top_k=1,
        minibatch_size=4,
        max_labeled_demos=6,
        max_bootstrapped_demos=0,
        num_threads=1,
    )
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        program = ape.compile(
            dspy.Predict(dspy.Signature("input -> output", BASELINE_INSTRUCTION)),
            trainset=dataset(20),
            valset=dataset(6, 100),
        )
    result = compile_record(program).search
    assert result.rejected.get("demo_set_overflow", 0) >= 1  # the 6-demo set did not fit
    assert 0 < len(program.demos) < 6  # trimmed, not emptied
    assert all(row["errors"].get("context_overflow", 0) == 0 for row in result.trials)
    task_prompts = [m for m in engine.requests if "please handle item number" in m[-1]["content"]]
    assert task_prompts and all(engine.count_prompt_tokens(m) + 1 <= 40 for m in task_prompts)
