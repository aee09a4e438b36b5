"""The search core: Candidate, CandidateStore, TrialLog, ProposalFilter and SearchRun.

Unit tests of each piece, plus short runs on a deterministic fake engine for what
only shows in a run (the trial log file, error accounting). Task requests are
told apart from meta-prompts by the system message, which ``PlainAdapter`` fills
with the signature instructions (for meta-prompts: the docstrings in
:mod:`dspy_ext.meta_prompts`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dspy
import pytest

from dspy_ext import OPRO
from dspy_ext.adapters.plain import PlainAdapter
from dspy_ext.evaluation import EvaluationReport
from dspy_ext.evaluation.evaluator import ErrorKind, RowResult
from dspy_ext.lm import FakeEngine
from dspy_ext.lm.engine import Generation
from dspy_ext.lm.metering import UsageSnapshot
from dspy_ext.meta_prompts import DEFAULT_META_PROMPTS, meta_prompt_texts
from dspy_ext.prompt_state import compile_record
from dspy_ext.search import (
    Candidate,
    CandidateStore,
    CompileOptions,
    Models,
    PredictorPrompt,
    Proposal,
    ProposalFilter,
    SearchRun,
    TrialLog,
    clean_proposal,
)
from dspy_ext.search.run import PROPOSAL_MAX_TOKENS

_lm_ids = itertools.count()
META_TEXT = [sig.instructions for sig in DEFAULT_META_PROMPTS.values()]
REPO = Path(__file__).resolve().parents[1]


def is_meta(messages: list[dict[str, str]]) -> bool:
    return any(text in messages[0]["content"] for text in META_TEXT)


def item(i: int) -> dspy.Example:
    return dspy.Example(input=f"please handle item number {i} now", output=f"ITEM-{i}").with_inputs("input")


def item_number(text: str) -> int:
    return int(re.search(r"item number (\d+)", text).group(1))


def metric(example, prediction, trace=None) -> bool:
    return example.output == prediction.output


def fake_lm(engine: FakeEngine) -> dspy.LM:
    return dspy.LM(f"fake/test-search-{next(_lm_ids)}", engine=engine, cache=False, num_retries=0)


class TwoSteps(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = dspy.Predict(dspy.Signature("question -> notes", "Take notes."))
        self.second = dspy.Predict(dspy.Signature("question, notes -> answer", "Answer from the notes."))

    def forward(self, question):
        notes = self.first(question=question).notes
        return self.second(question=question, notes=notes)


def candidate(first: str = "Take notes.", second: str = "Answer from the notes.", demos=(), **kwargs) -> Candidate:
    return Candidate({"first": PredictorPrompt(first, 0, tuple(demos)), "second": PredictorPrompt(second)}, **kwargs)


# ---- Candidate ---------------------------------------------------------------------------------


def test_candidate_key_depends_on_content_only() -> None:
    a = candidate()
    same = Candidate(
        {"second": PredictorPrompt("Answer from the notes."), "first": PredictorPrompt("Take notes.")},
        parents=("abc",),
        origin="opro.step3",
        meta={"x": 1},
    )
    assert re.fullmatch(r"[0-9a-f]{16}", a.key)
    assert a.key == same.key == candidate().key  # order of predictors, provenance and meta do not matter
    assert candidate(first="Take short notes.").key != a.key
    assert candidate(second="Answer from the notes!").key != a.key
    demo = {"question": "q", "notes": "n"}
    assert candidate(demos=[demo]).key != a.key
    assert candidate(demos=[demo]).key == candidate(demos=[dict(demo)]).key
    assert candidate(demos=[{**demo, "notes": "other"}]).key != candidate(demos=[demo]).key


def test_candidate_key_is_stable_across_processes() -> None:
    code = (
        "from dspy_ext.search import Candidate, PredictorPrompt\n"
        "print(Candidate({'first': PredictorPrompt('Take notes.', 0, ({'question': 'q', 'notes': 'n'},)),"
        " 'second': PredictorPrompt('Answer from the notes.')}).key)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == candidate(demos=[{"question": "q", "notes": "n"}]).key


def test_with_instruction_makes_a_child_and_leaves_the_parent() -> None:
    parent = candidate(demos=[{"question": "q", "notes": "n"}])
    child = parent.with_instruction("second", "Answer in one word.", origin="ape.resample1", gradient="g")
    assert child.instructions == {"first": "Take notes.", "second": "Answer in one word."}
    assert child.prompts["first"] == parent.prompts["first"]  # the other predictor keeps instruction and demos
    assert child.parents == (parent.key,) and child.origin == "ape.resample1" and child.meta == {"gradient": "g"}
    assert parent.instructions["second"] == "Answer from the notes."
    crossed = parent.with_instruction("first", "Take notes fast.", origin="ga", parents=("a", "b"))
    assert crossed.parents == ("a", "b")
    row = child.to_dict()
    assert row == {
        "key": child.key,
        "instructions": child.instructions,
        "demo_sets": {"first": 0, "second": 0},
        "n_demos": {"first": 1, "second": 0},
        "parents": [parent.key],
        "origin": "ape.resample1",
    }


def test_apply_uses_with_instructions_and_does_not_mutate_the_student(monkeypatch: pytest.MonkeyPatch) -> None:
    student = TwoSteps()
    student.first.demos = [dspy.Example(question="old q", notes="old n")]
    first_sig, second_sig = student.first.signature, student.second.signature
    calls = []
    original = dspy.Signature.with_instructions.__func__

    def spy(cls, instructions):
        calls.append(instructions)
        return original(cls, instructions)

    monkeypatch.setattr(dspy.Signature, "with_instructions", classmethod(spy))
    new = candidate("Write terse notes.", "Answer tersely.", demos=[{"question": "q1", "notes": "n1"}])
    program = new.apply(student)

    assert sorted(calls) == ["Answer tersely.", "Write terse notes."]
    assert program is not student and program.first is not student.first
    assert program.first.signature.instructions == "Write terse notes."
    assert program.second.signature.instructions == "Answer tersely."
    assert program.first.signature is not first_sig and program.second.signature is not second_sig
    assert [d.toDict() for d in program.first.demos] == [{"question": "q1", "notes": "n1"}]
    assert program.second.demos == []
    # The student, its signature classes and its demos are as they were.
    assert student.first.signature is first_sig and student.second.signature is second_sig
    assert first_sig.instructions == "Take notes." and second_sig.instructions == "Answer from the notes."
    assert [d.toDict() for d in student.first.demos] == [{"question": "old q", "notes": "old n"}]
    # from_program reads the applied prompts back: same content, same key.
    assert Candidate.from_program(program).key == new.key


# ---- CandidateStore ------------------------------------------------------------------------------


def test_store_dedupes_by_content() -> None:
    store = CandidateStore()
    record, new = store.add(candidate(origin="student"))
    again, new_again = store.add(candidate(origin="opro.step2", parents=("x",)))
    assert new and not new_again and again is record and len(store) == 1
    assert record.candidate.origin == "student"  # the first one seen is kept
    other, other_new = store.add(candidate(first="Take detailed notes."))
    assert other_new and other.order == 1 and len(store) == 2
    assert candidate().key in store and store.get(candidate().key) is record
    assert store.seen_instruction("  take   NOTES. ")  # case- and space-insensitive
    assert store.seen_instruction("Take detailed notes.") and not store.seen_instruction("Take no notes.")


def test_store_ranks_by_mean_then_coverage_then_age() -> None:
    store = CandidateStore()
    records = [store.add(candidate(first=f"Instruction {k}."))[0] for k in range(4)]
    records[0].train_scores = {"a": 1.0, "b": 0.0}  # 50, n=2
    records[1].train_scores = {"a": 1.0, "b": 0.0, "c": 1.0, "d": 0.0}  # 50, n=4
    records[2].train_scores = {"a": 1.0}  # 100
    # records[3] never scored
    assert records[3].mean is None and records[2].mean == 100.0
    assert [r.order for r in store.ranked()] == [2, 1, 0]
    assert store.best_validated() is None
    records[0].val_score, records[0].val_n = 90.0, 5
    records[1].val_score, records[1].val_n = 60.0, 10
    assert store.best_validated() is records[1]  # validated on more rows wins


# ---- TrialLog --------------------------------------------------------------------------------------


def _report(scores: list[float | None], errors: list[ErrorKind | None], calls: int, tokens: tuple[int, int]):
    rows = [RowResult(i, 0, s, {"output": "x"}, e) for i, (s, e) in enumerate(zip(scores, errors))]
    return EvaluationReport(
        rows=rows, n_examples=len(rows), repeats=1, usage=UsageSnapshot(calls, 0, *tokens), seconds=0.5, cache_hits=1
    )


def test_trial_log_writes_one_json_line_per_evaluation(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "trials.jsonl"
    log = TrialLog(path)
    parent = candidate(origin="student")
    child = parent.with_instruction("first", "Take short notes.", origin="opro.step1")
    log.record(
        parent, _report([1.0, 0.0], [None, None], 2, (30, 4)), method="opro", step=0, split="train", running_mean=50.0
    )
    log.record(
        child,
        _report([1.0, None, 0.0], [None, ErrorKind.LM, ErrorKind.PARSE], 3, (40, 6)),
        method="opro",
        step=1,
        split="val",
    )

    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 == len(log.rows)
    first, second = (json.loads(line) for line in lines)
    assert first == log.rows[0] and second == log.rows[1]
    assert first["instructions"] == {"first": "Take notes.", "second": "Answer from the notes."}
    assert first["origin"] == "student" and first["parents"] == [] and first["step"] == 0
    assert first["score"] == 50.0 and first["lm_calls"] == 2 and first["tokens"] == 34 and first["errors"] == {}
    assert second["instructions"]["first"] == "Take short notes."
    assert second["origin"] == "opro.step1" and second["parents"] == [parent.key] and second["key"] == child.key
    assert second["split"] == "val" and second["n"] == 3 and second["trial"] == 1 and second["method"] == "opro"
    assert second["score"] == 50.0  # the LM error is left out of the mean; the parse error scores 0
    assert second["errors"] == {"lm_error": 1, "parse_error": 1}
    assert second["lm_calls"] == 3 and second["tokens"] == 46 and second["cache_hits"] == 1

    in_memory = TrialLog(None)
    in_memory.record(parent, _report([1.0], [None], 1, (1, 1)), method="ape", step=0, split="train")
    assert len(in_memory.rows) == 1 and in_memory.path is None


# ---- ProposalFilter and clean_proposal ----------------------------------------------------------------


META = "Someone followed one hidden instruction to turn each input below into its output and wrote it down."
INPUT = "please handle item number 3 now"


@pytest.fixture
def guard() -> ProposalFilter:
    return ProposalFilter(meta_texts=[META], train_inputs=[INPUT, "short one"])


def test_guard_accepts_a_plain_instruction(guard: ProposalFilter) -> None:
    assert guard.check("Reply with the item code in capitals.", truncated=False) is None
    assert guard.check("Reply with the item code in capitals.", truncated=None) is None


@pytest.mark.parametrize("text", ["", "   ", "...", "!?"])
def test_guard_rejects_empty(guard: ProposalFilter, text: str) -> None:
    assert guard.check(text, truncated=False) == "empty"


def test_guard_rejects_cut_off_proposals(guard: ProposalFilter) -> None:
    assert guard.check("A complete, short instruction.", truncated=True) == "truncated"  # the LM hit max_tokens
    unterminated = "Reply with the item code " + "and some more words " * 12
    assert len(unterminated.strip()) > 200
    assert guard.check(unterminated.strip(), truncated=None) == "truncated"  # unknown: looks cut off
    assert guard.check(unterminated.strip(), truncated=False) is None  # known to be complete
    assert guard.check(unterminated.strip() + ".", truncated=None) is None
    assert guard.check("Short and unterminated", truncated=None) is None


def test_guard_rejects_over_long(guard: ProposalFilter) -> None:
    assert guard.check("word " * 200 + "end.", truncated=False) == "too_long"


def test_guard_rejects_meta_prompt_leaks(guard: ProposalFilter) -> None:
    assert guard.check(META, truncated=False) == "meta_prompt_leak"
    # Eight consecutive words of the meta-prompt, in other case and punctuation, inside an instruction.
    assert (
        guard.check("Answer briefly; ONE HIDDEN INSTRUCTION to turn each input below, then stop.", truncated=False)
        == "meta_prompt_leak"
    )
    assert guard.check("Follow one hidden instruction to turn each input.", truncated=False) is None  # 7 words


def test_guard_rejects_verbatim_training_inputs(guard: ProposalFilter) -> None:
    assert guard.check(f"Answer like this: {INPUT}.", truncated=False) == "training_data_leak"
    assert guard.check("Answer like this: PLEASE handle, item number 3 now!", truncated=False) == "training_data_leak"
    assert guard.check("Answer like this: please handle item number 4 now.", truncated=False) is None
    assert guard.check("Keep it a short one.", truncated=False) is None  # inputs under 20 characters are generic


def test_guard_built_from_the_real_meta_prompts_catches_their_echo() -> None:
    guard = ProposalFilter(meta_texts=meta_prompt_texts(DEFAULT_META_PROMPTS))
    for text in META_TEXT:
        assert guard.check(clean_proposal(text), truncated=None) == "meta_prompt_leak", text


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ('  "Reply in capitals."  ', "Reply in capitals."),
        ("Instruction: Reply in capitals.", "Reply in capitals."),
        ("New instruction:   Reply\n in   capitals.", "Reply in capitals."),
        ("<instruction>Reply in capitals.</instruction>", "Reply in capitals."),
        ("<START>Reply in capitals.<END>", "Reply in capitals."),
        ("`Reply in capitals.`", "Reply in capitals."),
        ('""', ""),
        (None, ""),
    ],
)
def test_clean_proposal(raw, clean: str) -> None:
    assert clean_proposal(raw) == clean


# ---- SearchRun ---------------------------------------------------------------------------------------


def make_run(
    responder, *, trainset=None, engine_cls=FakeEngine, engine=None, run_metric=None
) -> tuple[SearchRun, FakeEngine]:
    engine = engine or engine_cls(responder)
    lm = fake_lm(engine)
    trainset = trainset or [item(i) for i in range(8)]
    run = SearchRun(
        CompileOptions(max_lm_calls=50, seed=0, num_threads=2 if run_metric else 1),
        method="unit",
        student=dspy.Predict(dspy.Signature("input -> output", "Reply to the request.")),
        trainset=trainset,
        valset=[item(i) for i in range(100, 104)],
        metric=run_metric or metric,
        models=Models(lm, PlainAdapter(), lm, PlainAdapter()),
        seed=0,
        proposal_filter=ProposalFilter(
            meta_texts=meta_prompt_texts(DEFAULT_META_PROMPTS), train_inputs=[ex.input for ex in trainset]
        ),
        meta_prompts=DEFAULT_META_PROMPTS,
        minibatch_size=4,
        search_cap=40,
        trial_log=TrialLog(None),
    )
    return run, engine


def test_admit_rejects_duplicates_cut_offs_and_leaks() -> None:
    run, _ = make_run(lambda messages: "x")
    seed = Candidate.from_program(run.student)
    run.store.add(seed)
    child = run.admit(
        Proposal("Instruction: Reply in capitals.", False, "paraphrase"), seed, "self", origin="unit.step1"
    )
    assert child is not None and child.instruction("self") == "Reply in capitals."
    assert child.origin == "unit.step1" and child.parents == (seed.key,)
    run.store.add(child)

    assert (
        run.admit(Proposal("Reply to the request.", False, "paraphrase"), seed, "self", origin="o") is None
    )  # the parent's own text
    assert (
        run.admit(Proposal("reply  IN capitals.", False, "paraphrase"), seed, "self", origin="o") is None
    )  # seen before (normalised)
    assert run.admit(Proposal("Reply in lower case.", True, "paraphrase"), seed, "self", origin="o") is None
    assert run.admit(Proposal('""', False, "paraphrase"), seed, "self", origin="o") is None
    assert (
        run.admit(
            Proposal("Reply like: please handle item number 2 now.", False, "paraphrase"), seed, "self", origin="o"
        )
        is None
    )
    assert run.rejected == {"duplicate": 2, "truncated": 1, "empty": 1, "training_data_leak": 1}


def test_ask_marks_proposals_stopped_at_max_tokens_as_truncated() -> None:
    class Cut(FakeEngine):
        def generate(self, request):
            g = super().generate(request)
            return Generation(g.text, g.input_tokens, g.output_tokens, "length")

    run, engine = make_run(lambda messages: "Reply in capitals.", engine_cls=Cut)
    proposals = run.ask("paraphrase", 2, instruction="Reply to the request.")
    assert proposals == [Proposal("Reply in capitals.", True, "paraphrase")] * 2 and engine.calls == 2
    assert run.admit(proposals[0], Candidate.from_program(run.student), "self", origin="o") is None
    assert run.rejected == {"truncated": 1}

    complete, _ = make_run(lambda messages: "Reply in capitals.")
    assert complete.ask("paraphrase", 1, instruction="Reply to the request.") == [
        Proposal("Reply in capitals.", False, "paraphrase")
    ]


def test_a_real_cut_off_proposal_is_rejected_as_truncated() -> None:
    """The engine stops at the proposal token cap: finish reason "length" reaches the guard."""
    words = " ".join(f"word{i}" for i in range(400))
    run, engine = make_run(lambda messages: words)
    [proposal] = run.ask("paraphrase", 1, instruction="Reply to the request.")
    assert proposal.truncated is True and len(proposal.text.split()) == PROPOSAL_MAX_TOKENS
    assert run.admit(proposal, Candidate.from_program(run.student), "self", origin="o") is None
    assert run.rejected == {"truncated": 1}


def test_evaluation_errors_are_counted_not_scored() -> None:
    """LM and metric errors are left out of the score and logged; an unparseable reply scores 0."""

    def responder(messages):
        i = item_number(messages[-1]["content"])
        return "" if i % 8 == 1 else f"ITEM-{i}"  # empty reply: parse error

    def strict_metric(example, prediction, trace=None):
        if item_number(example.input) % 8 == 2:
            raise RuntimeError("metric broke")
        return example.output == prediction.output

    engine = FakeEngine(responder, fail_when=lambda m: item_number(m[-1]["content"]) % 8 == 0)
    run, _ = make_run(responder, engine=engine, run_metric=strict_metric)
    batch = [item(i) for i in range(16)]
    seed = Candidate.from_program(run.student)
    report = run.evaluate(seed, batch, split="train")

    row = run.trial_log.rows[-1]
    assert row["errors"] == {"lm_error": 2, "parse_error": 2, "metric_error": 2}
    assert row["n"] == 16 and row["lm_calls"] == 16 == engine.calls
    # 12 rows are scored (16 minus 2 LM and 2 metric errors): 10 right, 2 unparseable at 0 -> 83.33
    # (not 62.5, as if every error had silently scored 0).
    assert report.score == pytest.approx(100 * 10 / 12) and row["score"] == 83.33
    assert run.store.get(seed.key).n_scored == 12 and run.store.get(seed.key).mean == pytest.approx(100 * 10 / 12)


# ---- the trial log of a real run -------------------------------------------------------------------------


def opro_world(messages: list[dict[str, str]]) -> str:
    if is_meta(messages):
        opro_world.k += 1
        return f"Handle the request at level {opro_world.k % 9}, variant {opro_world.k}."
    i, system = item_number(messages[-1]["content"]), messages[0]["content"]
    match = re.search(r"level (\d)", system)
    return f"ITEM-{i}" if match and i % 8 < int(match.group(1)) else "unknown"


def test_compile_writes_the_trial_log(tmp_path: Path) -> None:
    opro_world.k = 0
    engine = FakeEngine(opro_world)
    opro = OPRO(
        metric,
        seed=0,
        steps=2,
        proposals_per_step=2,
        minibatch_size=6,
        max_bootstrapped_demos=0,
        max_labeled_demos=0,
        num_threads=1,
        log_dir=tmp_path,
    )
    train, val = [item(i) for i in range(16)], [item(i) for i in range(100, 108)]
    for _ in range(2):  # a second compile into the same folder starts a fresh log
        engine.requests.clear()
        with dspy.context(lm=fake_lm(engine), adapter=PlainAdapter()):
            program = opro.compile(dspy.Predict("input -> output"), trainset=train, valset=val)

    result = compile_record(program).search
    rows = [json.loads(line) for line in (tmp_path / "trials.jsonl").read_text().splitlines()]
    assert rows == result.trials and len(rows) >= 5
    keys_before: set[str] = set()
    for row in rows:
        assert {"instructions", "parents", "origin", "score", "lm_calls", "tokens", "errors", "step", "split"} <= set(
            row
        )
        assert set(row["parents"]) <= keys_before | {r["key"] for r in rows}
        keys_before.add(row["key"])
    origins = {row["origin"] for row in rows}
    assert {"student", "opro.step1", "opro.step2"} <= origins and any(o.startswith("final:") for o in origins)
    children = [r for r in rows if r["origin"].startswith("opro.step")]
    assert all(len(r["parents"]) == 1 and r["parents"][0] in {x["key"] for x in rows} for r in children)

    # Every task-model call happens inside a logged evaluation, and its tokens are the engine's.
    task = [m for m in engine.requests if not is_meta(m)]
    assert sum(r["lm_calls"] for r in rows) == len(task)
    expected_tokens = sum(sum(len(x["content"].split()) for x in m) + len(opro_world(m).split()) for m in task)
    assert sum(r["tokens"] for r in rows) == expected_tokens
    assert result.lm_calls == engine.calls and result.tokens >= expected_tokens


def test_guard_rejects_a_proposal_that_echoes_a_meta_prompt_field() -> None:
    """A small model often answers OPRO's prompt with its own 'Step: input -> output' line (seen on SmolLM2)."""
    from dspy_ext.meta_prompts import DEFAULT_META_PROMPTS, meta_prompt_labels

    guard = ProposalFilter(meta_labels=meta_prompt_labels(DEFAULT_META_PROMPTS))
    assert guard.check("Step: input -> output", truncated=False) == "echoed_meta_prompt"
    assert guard.check("Scored instructions: Instruction: x Accuracy: 40", truncated=False) == "echoed_meta_prompt"
    assert guard.check("Input: great film -> Output: positive", truncated=False) == "echoed_meta_prompt"
    assert guard.check("Output whether the review is positive or negative.", truncated=False) is None


def test_clean_proposal_strips_a_chatty_preamble() -> None:
    """SmolLM2 often answers 'Here's the new instruction: "..."' (seen in the first_word_letter runs)."""
    assert clean_proposal('Here\'s the new instruction: "write the first letter of the word"') == (
        "write the first letter of the word"
    )
    assert clean_proposal("Here is the improved prompt: Name the larger animal.") == "Name the larger animal."
    assert clean_proposal("Here's the new instruction: \"write the first letter") == "write the first letter"


# ---- the shared settings ---------------------------------------------------------------------------------


def test_compile_options_are_checked_once_when_made() -> None:
    from dspy_ext.search import CompileOptions

    options = CompileOptions(max_lm_calls=200, seed=3, guards=["format=0"], repeats=2, guard_repeats=3)
    assert options.guards == {"format": 0.0} and options.eval_repeats == 3
    assert CompileOptions(repeats=2, guard_repeats=3).eval_repeats == 2  # guard_repeats only with guards
    for bad, message in [
        ({"max_lm_calls": 0}, "max_lm_calls must be >= 1"),
        ({"num_threads": 0}, "num_threads must be >= 1"),
        ({"repeats": 0}, "repeats must be >= 1"),
        ({"guard_repeats": 0}, "guard_repeats must be >= 1"),
        ({"eval_temperature": -1.0}, "eval_temperature must be >= 0"),
        ({"guards": {"format": 101}}, "outside 0-100"),
        ({"final_selector": object()}, "final_selector must have a select"),
        ({"guard_reference": "student"}, "guard_reference must be a dspy.Module"),
        ({"feedback": ["critique"]}, "feedback must be a SearchFeedback"),
    ]:
        with pytest.raises(ValueError, match=message):
            CompileOptions(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.seed = 4  # type: ignore[misc]
    assert options.replace(seed=4).seed == 4 and options.seed == 3


def test_an_optimizer_takes_the_shared_settings_as_keywords_or_as_options() -> None:
    from dspy_ext.optimizers import APE, DemoSearch
    from dspy_ext.search import CompileOptions, SuccessiveHalving

    by_keywords = APE(metric, max_lm_calls=120, seed=2, top_k=2)
    by_options = APE(metric, options=CompileOptions(max_lm_calls=120, seed=2), top_k=2)
    assert by_keywords.options == by_options.options and by_keywords.config == by_options.config
    assert by_keywords.max_lm_calls == 120 and isinstance(by_keywords.final_selector, SuccessiveHalving)
    with pytest.raises(ValueError, match="not both"):
        APE(metric, options=CompileOptions(), seed=1)
    # DemoSearch's final choice is its own race, and its guards are the registry's acceptance gate.
    for shared in ({"final_selector": SuccessiveHalving()}, {"guards": {"score": 0}}):
        with pytest.raises(ValueError, match="final selection|acceptance gate"):
            DemoSearch(metric, **shared)


def test_rejection_reasons_are_strings() -> None:
    from dspy_ext.search import Rejection

    assert Rejection.DUPLICATE == "duplicate" and f"{Rejection.DUPLICATE}" == "duplicate"
    assert json.dumps({Rejection.TRUNCATED: 1}) == '{"truncated": 1}'
    run, _ = make_run(lambda messages: "x")
    run.reject(Rejection.EMPTY)
    run.reject("empty")
    assert run.rejected == {"empty": 2} and type(next(iter(run.rejected))) is str
