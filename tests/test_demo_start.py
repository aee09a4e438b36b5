"""The instruction searches' demo start: the free baseline raced against class-balanced demo sets on val.

The fake world: reviews ``"good film i"`` / ``"bad film i"`` labelled positive/negative. A prompt whose
demos are all one label makes the fake model answer that label for every row (what SmolLM2 does on
sentiment); otherwise it answers row ``i`` right iff ``i % 16`` is below the number of demos. Meta
requests (an optimizer writing an instruction) get the shared fake world's proposals. With seed 0 the
free baseline's 3 random labeled demos are all ``positive``.
"""

from __future__ import annotations

import functools

import dspy
import pytest

from dspy_ext.adapters import PlainAdapter
from dspy_ext.optimizers import APE, OPRO, EvoPrompt, ProTeGi
from dspy_ext.prompt_state import compile_record
from dspy_ext.search.demo_start import baseline_draw
from dspy_ext.search.plan import PlanInputs

from support import fake_world
from support.reviews import TRAIN, VAL


def respond(messages: list[dict[str, str]]) -> str:
    text = messages[-1]["content"].removeprefix("Input: ")
    parts = text.split(" ")
    if len(parts) != 3 or parts[1] != "film":
        return fake_world.respond(messages)
    demos = [m["content"].strip() for m in messages[:-1] if m["role"] == "assistant"]
    if demos and len(set(demos)) == 1:
        return demos[0]  # one label in every demo: the model repeats it
    gold = "positive" if parts[0] == "good" else "negative"
    return gold if int(parts[2]) % 16 < len(demos) else ("negative" if gold == "positive" else "positive")


def student() -> dspy.Predict:
    return dspy.Predict(dspy.Signature("input -> output", "Say positive or negative."))


def exact(example, prediction, trace=None) -> float:
    return float(prediction.output == example.output)


def compile_ape(lm: dspy.LM, **settings) -> dspy.Module:
    settings = {"max_lm_calls": 400, "seed": 0, "num_threads": 1, "max_bootstrapped_demos": 0, **settings}
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        return APE(exact, **settings).compile(student(), trainset=TRAIN, valset=VAL)


def test_the_seed_draws_a_one_label_baseline():
    assert {d.output for d in baseline_draw(TRAIN, 0)} == {"positive"}


def test_a_one_label_baseline_is_replaced_by_a_balanced_set_that_beats_it_on_val(fake_lm, tmp_path):
    lm = fake_lm(respond)
    program = compile_ape(lm, log_dir=tmp_path)
    result = compile_record(program).search
    start = result.demo_start
    assert start["chosen"].startswith("balanced.k") and start["labels"] == ["negative", "positive"]
    assert start["rows"] == 20 and start["arms"][0]["arm"] == "baseline" and start["arms"][0]["val"] == 50.0
    chosen = next(a for a in start["arms"] if a["arm"] == start["chosen"])
    assert chosen["val"] > 50.0 and chosen["val_rows"] == 20
    # The search ran on the chosen set: the returned program's demos hold both labels.
    assert {d["output"] for d in program.demos} == {"negative", "positive"}
    assert len(program.demos) == start["k"]
    assert result.val_score is not None and result.val_score > 50.0
    assert result.lm_calls <= 400
    # The race's val rows are in the trial log, one row per arm and round.
    raced = [r for r in result.trials if r["split"] == "val" and r["origin"].startswith("start.")]
    assert len(raced) == sum(a["val_rows"] // 10 for a in start["arms"])


def test_every_instruction_search_starts_from_the_race(fake_lm):
    ga, de = functools.partial(EvoPrompt, variant="ga"), functools.partial(EvoPrompt, variant="de")
    for name, method in {"opro": OPRO, "ga": ga, "de": de, "protegi": ProTeGi}.items():
        lm = fake_lm(respond)
        with dspy.context(lm=lm, adapter=PlainAdapter()):
            program = method(exact, max_lm_calls=300, seed=0, num_threads=1, max_bootstrapped_demos=0).compile(
                student(), trainset=TRAIN, valset=VAL
            )
        result = compile_record(program).search
        assert result.demo_start["chosen"] != "baseline", name
        assert {d["output"] for d in program.demos} == {"negative", "positive"}, name
        assert result.lm_calls <= 300


def test_a_baseline_as_good_as_every_balanced_set_is_kept(fake_lm):
    lm = fake_lm(lambda m: fake_world.respond(m) if "film" not in m[-1]["content"] else "positive")
    program = compile_ape(lm, max_lm_calls=200, seed=3)
    start = compile_record(program).search.demo_start
    assert start["chosen"] == "baseline" and start["rows"] == 10
    assert [d["input"] for d in program.demos] == [d.input for d in baseline_draw(TRAIN, 3)]


def test_a_budget_too_small_for_one_round_keeps_the_baseline_and_says_why(fake_lm):
    lm = fake_lm(respond)
    program = compile_ape(lm, max_lm_calls=60)
    result = compile_record(program).search
    assert result.demo_start["chosen"] == "baseline" and result.demo_start["rows"] == 0
    assert "cannot race 4 demo sets on 10 valset rows" in result.demo_start["note"]
    assert result.lm_calls <= 60


def test_an_empty_demo_start_keeps_the_random_draw_of_the_earlier_releases(fake_lm):
    lm = fake_lm(respond)
    program = compile_ape(lm, max_lm_calls=200, demo_start=())
    result = compile_record(program).search
    assert result.demo_start is None
    assert not any(r["origin"].startswith("start.") for r in result.trials)
    assert len(program.demos) == 3


def test_bad_demo_start_settings_fail_clearly():
    with pytest.raises(ValueError, match="demo_start: .*every demo count must be >= 1"):
        APE(exact, demo_start=(3, 0))
    with pytest.raises(ValueError, match="demo_start_share"):
        APE(exact, demo_start_share=1.5)


def test_the_plan_counts_the_race(fake_lm):
    inputs = PlanInputs(n_train=40, n_val=30, n_predictors=1)
    with_start = APE(exact, max_lm_calls=1000).plan(inputs)
    without = APE(exact, max_lm_calls=1000, demo_start=()).plan(inputs)
    assert with_start.task_calls - without.task_calls == 4 * 20


@pytest.mark.embedded
def test_embedded_ape_races_its_demo_start_on_a_sentiment_slice(local_lm):
    from dspy_ext.data import load_task, split_train_val

    task = load_task("sentiment")
    train, val = split_train_val(task.train, 24, 20, seed=0)
    predict = dspy.Predict(dspy.Signature("input -> output", task.instructions[0]))
    settings = {
        "max_lm_calls": 80,
        "seed": 0,
        "num_threads": 1,
        "steps": 0,
        "num_candidates": 1,
        "max_bootstrapped_demos": 0,
        "demo_start": (3, 8),
        "demo_start_share": 0.9,  # 10 rows of 3 sets fit in the search's 52 calls
    }
    with dspy.context(lm=local_lm, adapter=PlainAdapter()):
        program = APE(exact, **settings).compile(predict, trainset=train, valset=val)
    result = compile_record(program).search
    start = result.demo_start
    assert start["labels"] is not None and start["rows"] == 10
    assert [a["arm"] for a in start["arms"]][0] == "baseline" and len(start["arms"]) >= 2
    baseline_val = start["arms"][0]["val"]
    chosen = next(a for a in start["arms"] if a["arm"] == start["chosen"])
    assert chosen["val"] >= baseline_val and chosen["val_rows"] == 10
    assert result.lm_calls <= 80
