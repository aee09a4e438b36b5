"""Compiling from human review: a review store's grades, critiques and criteria reach the optimizers.

On the fake world (``support.fake_world``: item ``i`` is solved iff ``i % 8 < level``), a real SQLite
review store holds Good outputs (``ITEM-i``), Bad ones (``unknown``) with reasons, a correction, and a
criterion whose check ``regex:^ITEM-\\d+$`` the alignment chooses. The tests follow each path:
labeled examples into the train pool, critiques into ProTeGi's gradients and OPRO's/EvoPrompt's
meta-prompts and GEPA's metric feedback, criteria into the metric and the guards, pinned cases into the
run report, and the review page showing only what a compile changed.
"""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path

import dspy
import pytest
from test_optimizers import (
    FAST,
    World,
    compile_in,
    keeping_level,
    leveled,
    meta_fields,
    metric,
    role_of,
    student_program,
)

from dspy_ext import OPRO, EvoPrompt, ProTeGi, compile_record
from dspy_ext.adapters import PlainAdapter
from dspy_ext.cli import main
from dspy_ext.experiment import RunSettings, SettingsError, run
from dspy_ext.experiment.feedback import merge_feedback
from dspy_ext.lm import FakeEngine
from dspy_ext.registry import GEPAMetric, build_optimizer
from dspy_ext.review import CheckSpec, Feedback, FeedbackError, ReviewApp, ReviewServer, ReviewStore, collect
from dspy_ext.search import HumanCritique, SearchFeedback
from metrics import exact_match

from support.fake_world import dataset, fake_world_lm, item, write_task
from support.slices import task_slice

REASON_LABEL = "answer with the item label such as ITEM-7, not unknown"
REASON_LEVEL = "the instruction should ask for a higher level"
CHECK = r"regex:^ITEM-\d+$"


def make_store(
    path: Path,
    good: range,
    bad: range,
    *,
    corrected: tuple[int, ...] = (),
    with_check: bool = True,
) -> Path:
    """A review store of the fake task: Good ``ITEM-i`` for ``good``, Bad ``unknown`` with reasons for ``bad``."""
    with ReviewStore(path) as store:
        criterion = store.add_criterion(
            "item label", "answers with the item label", CheckSpec.parse(CHECK) if with_check else None
        )
        for i in good:
            key = store.add_output(
                {"input": item(i).input}, {"output": f"ITEM-{i}"}, prompt_version="v0", gold={"output": f"ITEM-{i}"}
            )
            store.set_grade(key, "good")
        for n, i in enumerate(bad):
            key = store.add_output(
                {"input": item(i).input}, {"output": "unknown"}, prompt_version="v0", gold={"output": f"ITEM-{i}"}
            )
            store.set_grade(key, "bad", REASON_LABEL if n % 2 == 0 else REASON_LEVEL)
            store.set_judgement(key, criterion.id, False)
            if i in corrected:
                store.set_correction(key, f"ITEM-{i}")
    return path


@pytest.fixture
def review(tmp_path: Path) -> Path:
    # Inputs 200.. are outside the fake task's train/val draw (0..39) and its test split (1000..).
    return make_store(tmp_path / "review.sqlite", good=range(200, 206), bad=range(206, 210), corrected=(206,))


def critiques() -> SearchFeedback:
    return SearchFeedback(
        (
            HumanCritique({"input": item(300).input}, {"output": "unknown"}, REASON_LABEL),
            HumanCritique({"input": item(301).input}, {"output": "unknown"}, REASON_LEVEL, correction="ITEM-301"),
            HumanCritique({"input": item(302).input}, {"output": "unknown"}, REASON_LABEL),
        )
    )


# ---- reading a store ---------------------------------------------------------------------------


def test_feedback_from_store_gives_examples_critiques_aligned_checks_and_pinned_cases(review: Path) -> None:
    fb = Feedback.from_store(review)
    assert len(fb.labeled) == 7 and sum(e.corrected for e in fb.labeled) == 1  # 6 Good + 1 corrected Bad
    examples = fb.examples(["input"], ["output"])
    assert {ex.output for ex in examples} == {f"ITEM-{i}" for i in (*range(200, 206), 206)}
    assert set(examples[0].inputs().keys()) == {"input"}
    assert [c.reason for c in fb.critiques] == [REASON_LABEL, REASON_LEVEL, REASON_LABEL, REASON_LEVEL]
    # The alignment chose the regex: it fails every Bad output and no Good one.
    assert [(c.name, str(c.check), c.coverage, c.false_failure_rate) for c in fb.checks] == [
        ("item label", CHECK, 1.0, 0.0)
    ]
    assert fb.guards() == {"item label": 0.0}
    part = fb.metric_parts(["output"])["item label"]
    assert part(None, dspy.Prediction(output="ITEM-3")) == 1.0 and part(None, dspy.Prediction(output="no")) == 0.0
    assert [p.outputs["output"] for p in fb.pinned] == [f"ITEM-{i}" for i in range(200, 206)]
    assert fb.search_feedback().reasons() == [REASON_LABEL, REASON_LEVEL]
    with ReviewStore(review) as store:  # reading does not write the chosen checks back
        assert all(c.chosen_check_id is None for c in store.criteria())


def test_unusable_stores_are_one_line_errors(tmp_path: Path, review: Path) -> None:
    with pytest.raises(FeedbackError, match="no such review store"):
        Feedback.from_store(tmp_path / "missing.sqlite")
    (tmp_path / "junk.sqlite").write_text("not a database")
    with pytest.raises(FeedbackError, match="not a review store"):
        Feedback.from_store(tmp_path / "junk.sqlite")
    with ReviewStore(tmp_path / "empty.sqlite") as store:
        store.add_output({"input": "x"}, {"output": "y"}, prompt_version="v")
    with pytest.raises(FeedbackError, match="no graded outputs yet"):
        Feedback.from_store(tmp_path / "empty.sqlite")
    with pytest.raises(FeedbackError, match=r"fields \['input'\] -> \['output'\], the task has \['question'\]"):
        Feedback.from_store(review).examples(["question"], ["answer"])


def test_a_criterion_without_an_aligned_check_is_skipped_with_the_reason(tmp_path: Path) -> None:
    fb = Feedback.from_store(make_store(tmp_path / "r.sqlite", range(5), range(5, 8), with_check=False))
    assert fb.checks == [] and "no aligned check" in fb.skipped["item label"]
    assert fb.guards() == {}


# ---- the optimizers receive the critiques ------------------------------------------------------


def test_protegi_takes_the_reviewers_reasons_as_its_first_gradients() -> None:
    engine = FakeEngine(
        World({"edit": leveled([6, 2, 5, 7]), "edit_feedback": leveled([7, 3]), "paraphrase": keeping_level()})
    )
    protegi = ProTeGi(
        metric,
        beam_width=2,
        num_gradients=2,
        errors_per_gradient=3,
        paraphrases_per_edit=1,
        bandit_pulls=4,
        bandit_batch=3,
        steps=2,
        minibatch_size=8,
        feedback=critiques(),
        **FAST,
    )
    program = compile_in(
        protegi, student_program("Handle the request at level 4."), engine, train=dataset(40), val=dataset(16, 100)
    )

    roles = [role_of(m) for m in engine.requests if role_of(m) in ("diagnose", "edit", "edit_feedback")]
    # The first beam member takes both distinct reasons: no diagnosis is asked before they are used.
    assert roles[:2] == ["edit_feedback", "edit_feedback"] and roles.count("edit_feedback") == 2
    assert "diagnose" in roles[2:]  # the LM is asked for more once the reviewer's reasons are used
    edits = [meta_fields(m) for m in engine.requests if role_of(m) == "edit_feedback"]
    assert [e["problem"] for e in edits] == [REASON_LABEL, REASON_LEVEL]
    assert edits[0]["failures"].count("Reviewer's reason: " + REASON_LABEL) == 2  # both critiques of that reason
    assert f"Input: {item(300).input}\nRejected output: unknown" in edits[0]["failures"]
    assert "Corrected output: ITEM-301" in edits[1]["failures"]
    trials = compile_record(program).search.trials
    sources = {r.get("gradient_source") for r in trials if r["origin"].startswith("protegi.edit")}
    assert sources == {"reviewer", "lm"}
    reviewer = [r for r in compile_record(program).search.trials if r.get("gradient_source") == "reviewer"]
    assert {r["gradient"] for r in reviewer} == {REASON_LABEL, REASON_LEVEL}


@pytest.mark.parametrize(
    ("make", "base_role"),
    [
        (lambda **kw: OPRO(metric, proposals_per_step=2, steps=2, **kw), "trajectory"),
        (lambda **kw: EvoPrompt(metric, variant="ga", population_size=4, steps=2, **kw), "crossover"),
        (lambda **kw: EvoPrompt(metric, variant="de", population_size=4, steps=2, **kw), "differential"),
    ],
)
def test_opro_and_evoprompt_show_the_critiques_as_failures_to_fix(make, base_role: str) -> None:
    engine = FakeEngine(World({"paraphrase": keeping_level()}))
    compile_in(
        make(feedback=critiques(), minibatch_size=6, **FAST),
        student_program(),
        engine,
        train=dataset(40),
        val=dataset(16, 100),
    )
    asked = [meta_fields(m) for m in engine.requests if role_of(m) == f"{base_role}_feedback"]
    assert asked and not [m for m in engine.requests if role_of(m) == base_role]
    for fields in asked:
        shown = re.findall(r"Reviewer's reason: (.*)", fields["reviewer_feedback"])
        assert set(shown) == {REASON_LABEL, REASON_LEVEL}  # distinct reasons first, up to `shown` critiques
        assert fields["reviewer_feedback"].count("Rejected output: unknown") == 3


@pytest.mark.parametrize("method", ["opro", "protegi", "evoprompt-de"])
def test_without_critiques_the_prompts_are_exactly_those_of_a_plain_compile(method: str) -> None:
    def requests(**extra) -> list:
        engine = FakeEngine(World({"paraphrase": keeping_level()}))
        optimizer = build_optimizer(
            method, metric, config={"steps": 2, "minibatch_size": 6}, budget=400, num_threads=1, **extra
        ).optimizer
        compile_in(
            optimizer,
            student_program("Handle the request at level 4."),
            engine,
            train=dataset(30),
            val=dataset(12, 100),
        )
        return engine.requests

    assert requests(feedback=SearchFeedback(())) == requests()


def test_gepa_metric_returns_the_reviewers_words_as_feedback() -> None:
    gepa_metric = GEPAMetric(exact_match, critiques())
    example = item(300)
    # GEPA scores without pred_name: the metric's own value, unchanged.
    right = dspy.Prediction(output="ITEM-300")
    assert gepa_metric(example, right) == exact_match(example, right)
    on_input = gepa_metric(example, dspy.Prediction(output="unknown"), None, "predict", None)
    assert on_input.score == 0.0 and REASON_LABEL in on_input.feedback and "'unknown'" in on_input.feedback
    other = gepa_metric(item(5), dspy.Prediction(output="unknown"), None, "predict", None)
    assert "rejected similar outputs" in other.feedback and REASON_LEVEL in other.feedback
    passed = gepa_metric(item(5), dspy.Prediction(output="ITEM-5"), None, "predict", None)
    assert passed.score == 1.0 and passed.feedback == "This trajectory got a score of 1.0."
    with pytest.raises(ValueError, match="cannot use a reviewer's critiques"):
        build_optimizer("mipro", exact_match, feedback=critiques())


# ---- merged into a compile ---------------------------------------------------------------------


def test_merge_joins_labeled_examples_and_guards_every_review_criterion(tmp_path: Path) -> None:
    from dspy_ext.data import load_task

    folder = write_task(tmp_path / "items", n_train=40, n_test=16)
    task = load_task(data=str(folder))
    train, val = task.train[:12], task.train[12:20]
    # Reviewed: 3 new inputs (200..202), a train input with another label (0), a val input (12), a test input (1000).
    store = make_store(tmp_path / "r.sqlite", good=range(200, 203), bad=range(203, 205))
    with ReviewStore(store) as s:
        for i, output in ((0, "ITEM-0b"), (12, "ITEM-12"), (1000, "ITEM-1000")):
            s.set_grade(s.add_output({"input": item(i).input}, {"output": output}, prompt_version="v0"), "good")
    merged = merge_feedback(
        Feedback.from_store(store),
        metric=exact_match,
        metric_name="exact_match",
        task=task,
        train=train,
        val=val,
        guards={"exact_match": 2.0},
    )
    assert (merged.added, merged.relabeled, merged.held_out) == (3, 1, 2)
    assert len(merged.train) == 15 and merged.train[0].output == "ITEM-0b"
    assert not {ex.input for ex in merged.train} & {ex.input for ex in [*val, *task.test]}
    assert merged.metric.criteria == ["exact_match", "item label"]
    assert merged.guards == {"item label": 0.0, "exact_match": 2.0}
    # The objective stays the run's metric; the review criterion is measured beside it.
    m = merged.metric.measure(item(1), dspy.Prediction(output="ITEM-9"))
    assert m.score == 0.0 and m.criteria == {"exact_match": 0.0, "item label": 1.0}
    assert merged.critiques is not None and len(merged.critiques) == 2


def test_review_criteria_guard_the_search_a_candidate_breaking_one_is_never_returned(review: Path) -> None:
    from dspy_ext.data import TaskData

    fb = Feedback.from_store(review)
    task = TaskData(
        name="items", train=dataset(40), test=dataset(16, 1000), input_keys=("input",), output_keys=("output",)
    )
    merged = merge_feedback(
        fb, metric=exact_match, metric_name="exact_match", task=task, train=dataset(24), val=dataset(16, 100)
    )
    # Edits propose lower levels than the student's 6: fewer item labels, a drop of the guarded criterion.
    engine = FakeEngine(
        World({"edit": leveled([2, 3, 1]), "edit_feedback": leveled([2, 3]), "paraphrase": keeping_level()})
    )
    protegi = ProTeGi(
        merged.metric,
        guards=merged.guards,
        feedback=merged.critiques,
        beam_width=2,
        steps=2,
        bandit_pulls=4,
        bandit_batch=3,
        minibatch_size=8,
        **FAST,
    )
    program = compile_in(
        protegi, student_program("Handle the request at level 6."), engine, train=merged.train, val=dataset(16, 100)
    )
    broken = [t for t in compile_record(program).search.trials if t.get("guard") and not t["guard"]["ok"]]
    assert broken and all("item label" in t["guard"]["broken"] for t in broken)
    assert "level 6" in next(iter(compile_record(program).search.best["instructions"].values()))


def test_compile_from_review_reports_criteria_and_pinned_cases(tmp_path: Path, review: Path) -> None:
    folder = write_task(tmp_path / "items", n_train=40, n_test=16)
    settings = RunSettings(
        data=str(folder),
        optimizer="protegi",
        budget=150,
        train=12,
        val=8,
        threads=1,
        adapter="plain",
        out=str(tmp_path / "run"),
        feedback=str(review),
        optimizer_config={"steps": 1, "minibatch_size": 6},
    )
    result = run(settings, lm=fake_world_lm())
    summary = result.summary.to_dict()
    assert summary["feedback"]["added_to_train"] == 7 and summary["feedback"]["critiques_to_optimizer"] == 4
    assert summary["feedback"]["guards"] == {"item label": 0.0}
    assert set(summary["criteria"]) == {"exact_match", "item label"}
    assert set(summary["criteria"]["item label"]) == {"student", "compiled"}
    pinned = summary["pinned"]
    assert pinned["total"] == 6 and pinned["kept"] + pinned["broken"] + pinned["unscored"] == 6
    assert pinned["by"] == "checks"
    report = (result.out / "report.md").read_text()
    assert "## Human review" in report and f"{pinned['kept']} kept" in report
    assert json.loads((result.out / "run.json").read_text())["pinned"] == pinned
    # The trial log shows the reviewer's gradients.
    trials = [json.loads(line) for line in (result.out / "trials.jsonl").read_text().splitlines()]
    assert any(t.get("gradient_source") == "reviewer" for t in trials)


def test_pinned_cases_a_program_now_fails_are_named(review: Path) -> None:
    fb = Feedback.from_store(review)
    with dspy.context(lm=fake_world_lm(), adapter=PlainAdapter()):
        kept = fb.check_pinned(
            student_program("Handle the request at level 8."), input_keys=["input"], output_keys=["output"]
        )
        broken = fb.check_pinned(
            student_program("Handle the request at level 2."), input_keys=["input"], output_keys=["output"]
        )
    assert (kept.kept, kept.broken) == (6, 0)
    solved = [i for i in range(200, 206) if i % 8 < 2]  # 200, 201: the fake model still answers ITEM-i
    assert (broken.kept, broken.broken) == (len(solved), 6 - len(solved))
    case = broken.broken_items[0]
    assert case["output"] == "unknown" and case["failed"] == ["item label"] and case["approved"].startswith("ITEM-")


def test_cli_compile_feedback_json_has_the_criteria_table_and_pinned_counts(
    tmp_path: Path, review: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = write_task(tmp_path / "items", n_train=40, n_test=16)
    argv = [
        "compile",
        "--data",
        str(folder),
        "--optimizer",
        "protegi",
        "--feedback",
        str(review),
        "--budget",
        "120",
        "--train",
        "12",
        "--val",
        "8",
        "--threads",
        "1",
        "--adapter",
        "plain",
        "--out",
        str(tmp_path / "run"),
        "--optimizer-config",
        '{"steps": 1}',
        "--json",
    ]
    assert main(argv, lm=fake_world_lm()) == 0
    out = json.loads(capsys.readouterr().out)
    for name in ("exact_match", "item label"):
        assert isinstance(out["criteria"][name]["student"], float)
        assert isinstance(out["criteria"][name]["compiled"], float)
    assert {"kept", "broken", "broken_items"} <= set(out["pinned"])
    bad = [
        "compile",
        "--data",
        str(folder),
        "--feedback",
        str(tmp_path / "nope.sqlite"),
        "--out",
        str(tmp_path / "run2"),
        "--adapter",
        "plain",
        "--train",
        "12",
        "--val",
        "8",
    ]
    assert main(bad, lm=fake_world_lm()) == 2
    assert "no such review store" in capsys.readouterr().err


def test_a_changed_review_is_another_run_and_no_feedback_keeps_old_run_folders(tmp_path: Path, review: Path) -> None:
    folder = write_task(tmp_path / "items", n_train=40, n_test=16)
    base = dict(
        data=str(folder),
        optimizer="ape",
        budget=40,
        train=12,
        val=8,
        threads=1,
        adapter="plain",
        optimizer_config={"num_candidates": 2},
    )
    run(RunSettings(**base, out=str(tmp_path / "a")), lm=fake_world_lm(name="fake/same"))
    identity = json.loads((tmp_path / "a" / "resume.json").read_text())
    assert "feedback" not in identity["settings"] and "feedback" not in identity
    run(RunSettings(**base, out=str(tmp_path / "b"), feedback=str(review)), lm=fake_world_lm(name="fake/same"))
    with ReviewStore(review) as store:
        store.set_grade(store.items()[0].key, "bad", "too terse")
    with pytest.raises(SettingsError, match="holds another run"):
        run(RunSettings(**base, out=str(tmp_path / "b"), feedback=str(review)), lm=fake_world_lm(name="fake/same"))


def test_compare_cells_and_tune_trials_compile_from_the_review(tmp_path: Path, review: Path) -> None:
    from dspy_ext.experiment import CompareSettings, TuneSettings
    from dspy_ext.tuning.job import TuneJob

    folder = write_task(tmp_path / "items", n_train=40, n_test=16)
    compare = CompareSettings(data=str(folder), optimizers=["protegi", "ape"], feedback=str(review))
    assert compare.cell("ape", 1).feedback == str(review)
    settings = TuneSettings(
        data=str(folder),
        optimizers=["protegi", "ape"],
        storage="memory",
        train=12,
        val=8,
        adapter="plain",
        feedback=str(review),
    )
    job = TuneJob.from_settings(settings, lm=fake_world_lm())
    assert len(job.trainset) == 12 + 7  # the review's 6 Good and 1 corrected outputs joined the training rows
    assert job.tuner.metric.criteria == ["exact_match", "item label"]
    assert job.tuner.guards == {"item label": 0.0}
    assert job.tuner.feedback is not None and len(job.tuner.feedback) == 4


# ---- closing the loop: the review page shows what changed --------------------------------------


def test_after_a_compile_the_review_shows_only_changed_outputs_side_by_side(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path / "review.sqlite")
    rows = dataset(8)
    lm = fake_world_lm()
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        before = collect(
            student_program("Handle the request at level 4."),
            rows,
            store=store,
            input_keys=["input"],
            output_keys=["output"],
            lm=lm,
        )
    for it in store.items():
        store.set_grade(
            it.key,
            "good" if it.outputs["output"].startswith("ITEM") else "bad",
            "should be a label" if not it.outputs["output"].startswith("ITEM") else None,
        )
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        after = collect(
            student_program("Handle the request at level 6."),
            rows,
            store=store,
            input_keys=["input"],
            output_keys=["output"],
            lm=lm,
        )
    changed = store.changed_outputs(after.prompt_version)
    # Items 4 and 5 now get ITEM-i instead of unknown; the other six outputs are unchanged and keep their grades.
    assert sorted(store.item(k).outputs["output"] for k in changed) == ["ITEM-4", "ITEM-5"]
    assert all(store.item(b).grade == "bad" for befores in changed.values() for b in befores)
    assert store.progress() == (8, 10)
    assert before.prompt_version != after.prompt_version

    with ReviewServer(ReviewApp(store, changed_since=after.prompt_version), port=0) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        headers = {"X-Review-Token": server.app.token}
        conn.request("GET", "/api/next?filter=changed", headers=headers)
        first = json.loads(conn.getresponse().read())["key"]
        assert first in changed
        conn.request("GET", "/", headers=headers)  # the page opens on the changed outputs
        response = conn.getresponse()
        response.read()
        assert response.status == 303 and "filter=changed" in response.getheader("location")
        conn.request("GET", f"/item/{first}?filter=changed", headers=headers)
        page = conn.getresponse().read().decode()
        assert 'id="before-after"' in page and "should be a label" in page
        assert re.search(r'class="value before-output">unknown<', page)
        assert re.search(r'class="value after-output">ITEM-[45]<', page)
        conn.close()
    store.close()


def test_cli_review_of_a_run_compiled_from_review_collects_on_the_reviewed_inputs(
    tmp_path: Path, review: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = write_task(tmp_path / "items", n_train=40, n_test=16)
    lm = fake_world_lm(name="fake/review-loop")
    settings = RunSettings(
        data=str(folder),
        optimizer="protegi",
        budget=120,
        train=12,
        val=8,
        threads=1,
        adapter="plain",
        out=str(tmp_path / "run"),
        feedback=str(review),
        optimizer_config={"steps": 1},
    )
    run(settings, lm=lm)
    capsys.readouterr()
    assert main(["review", str(tmp_path / "run"), "--no-serve", "--json"], lm=lm) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["store"] == str(review)
    assert out["collect"]["inputs"] == 10  # every graded input of the review, whatever --n
    with ReviewStore(review) as store:
        version = out["collect"]["prompt_version"]
        assert out["changed"] == len(store.changed_outputs(version))
        unchanged = [i for i in store.items() if version in i.prompt_versions and len(i.prompt_versions) > 1]
        assert all(i.grade is not None for i in unchanged)  # an output the compile kept keeps its grade


# ---- the real embedded model -------------------------------------------------------------------


@pytest.mark.embedded
def test_compile_from_review_on_the_embedded_model(tmp_path: Path, local_lm, monkeypatch) -> None:
    """A scripted review of sentiment outputs feeds a tiny ProTeGi compile on SmolLM2 (a small slice of the task)."""
    from dspy_ext.data import load_task
    from dspy_ext.experiment import build_student
    from dspy_ext.review.collect import collect as collect_outputs

    monkeypatch.setenv("DSPY_EXT_LLAMA_THREADS", "1")
    task = load_task("sentiment")
    folder = task_slice(tmp_path / "sentiment-slice", n_train=16, n_test=6)
    store = ReviewStore(tmp_path / "review.sqlite")
    settings = RunSettings(
        data=str(folder),
        optimizer="protegi",
        budget=24,
        train=6,
        val=4,
        threads=1,
        out=str(tmp_path / "run"),
        feedback=str(tmp_path / "review.sqlite"),
        optimizer_config={
            "steps": 1,
            "beam_width": 1,
            "num_gradients": 1,
            "minibatch_size": 3,
            "bandit_pulls": 1,
            "bandit_batch": 2,
            "paraphrases_per_edit": 0,
            "max_bootstrapped_demos": 0,
        },
    )
    student = build_student(settings, load_task(data=str(folder)))
    student.predict.demos = task.train[:3]  # the labeled-demo program a user reviews first
    with dspy.context(lm=local_lm, adapter=PlainAdapter()):
        collect_outputs(
            student, task.train[10:16], store=store, input_keys=["input"], output_keys=["output"], lm=local_lm
        )
    store.add_criterion("label only", "answers positive or negative", CheckSpec.parse("one_of:positive,negative"))
    for it in store.items():
        right = it.gold and it.outputs["output"].strip().lower() == it.gold["output"]
        store.set_grade(it.key, "good" if right else "bad", None if right else "wrong label: read the whole sentence")
    graded_good = sum(it.grade == "good" for it in store.items())
    store.close()
    summary = run(settings, lm=local_lm).summary.to_dict()
    assert summary["lm_calls"] <= 24
    assert summary["feedback"]["labeled"] >= graded_good and summary["pinned"]["total"] == graded_good
    assert summary["pinned"]["kept"] + summary["pinned"]["broken"] + summary["pinned"]["unscored"] == graded_good
    assert "exact_match" in summary["criteria"]
    assert set(summary["criteria"]["exact_match"]) == {"student", "compiled"}
