"""Mechanics of APE, OPRO, EvoPrompt (GA, DE) and ProTeGi, proven on a deterministic fake engine.

The fake world
--------------
* Task: ``input = "please handle item number {i} now"`` -> ``output = "ITEM-{i}"``.
  The fake task model answers item ``i`` correctly iff ``i % 8 < level``, where
  ``level`` is the digit after "level" in the instruction (the system message
  under ``PlainAdapter``), 0 if there is none. So an instruction's wording sets
  its score: "level 3" solves 3/8 of a balanced batch, "level 8" all of it.
* Meta-prompts are recognised by their system message (the docstring of the
  Signature in :mod:`dspy_ext.meta_prompts`); their input fields are parsed back
  from the ``Prefix: value`` user message, so tests can read exactly what each
  optimizer showed the prompt model.
"""

from __future__ import annotations

import itertools
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable

import dspy
import pytest

from dspy_ext import APE, OPRO, EvoPrompt, ProTeGi
from dspy_ext.adapters.plain import PlainAdapter, field_prefix
from dspy_ext.lm import FakeEngine
from dspy_ext.lm.engine import Generation, request_messages
from dspy_ext.meta_prompts import DEFAULT_META_PROMPTS
from dspy_ext.optimizers.evoprompt import differing_parts, roulette_pick
from dspy_ext.optimizers.opro import render_trajectory
from dspy_ext.optimizers.protegi import format_failures
from dspy_ext.prompt_state import compile_record

_lm_ids = itertools.count()
META_TEXT = {role: sig.instructions for role, sig in DEFAULT_META_PROMPTS.items()}
STUDENT_INSTRUCTION = "Reply to the request."


# ---- the fake world ------------------------------------------------------------------------


def item(i: int) -> dspy.Example:
    return dspy.Example(input=f"please handle item number {i} now", output=f"ITEM-{i}").with_inputs("input")


def dataset(n: int, start: int = 0) -> list[dspy.Example]:
    return [item(i) for i in range(start, start + n)]


def metric(example, prediction, trace=None) -> bool:
    return example.output == prediction.output


def level(instruction: str) -> int:
    match = re.search(r"\blevel (\d)\b", instruction)
    return int(match.group(1)) if match else 0


def item_number(text: str) -> int:
    return int(re.search(r"item number (\d+)", text).group(1))


def solves(instruction: str, i: int) -> bool:
    return i % 8 < level(instruction)


def role_of(messages: list[dict[str, str]]) -> str | None:
    """The meta-prompt role of a request, or ``None`` for a task-model request."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    for role, text in META_TEXT.items():
        if text in system:
            return role
    return None


def meta_fields(messages: list[dict[str, str]]) -> dict[str, str]:
    """The input fields of a meta-prompt request, parsed from its ``Prefix: value`` lines."""
    signature = DEFAULT_META_PROMPTS[role_of(messages)]
    content = messages[-1]["content"]
    bounds = []
    position = 0
    for index, name in enumerate(signature.input_fields):
        prefix = field_prefix(signature, name) + " "
        if index == 0:
            assert content.startswith(prefix), content
            start = 0
        else:
            start = content.index("\n" + prefix, position) + 1
        bounds.append((name, start, start + len(prefix)))
        position = start + len(prefix)
    fields = {}
    for k, (name, _, value_start) in enumerate(bounds):
        end = bounds[k + 1][1] - 1 if k + 1 < len(bounds) else len(content)
        fields[name] = content[value_start:end]
    return fields


def task_answer(messages: list[dict[str, str]]) -> str:
    i = item_number(messages[-1]["content"])
    return f"ITEM-{i}" if solves(messages[0]["content"], i) else "unknown"


Handler = Callable[[dict[str, str]], str]


def leveled(levels: Iterable[int], template: str = "Handle the request at level {level}, variant {k}.") -> Handler:
    """A proposal handler cycling through ``levels``; every proposal text is unique."""
    cycle = itertools.cycle(levels)
    counter = itertools.count()

    def handler(fields: dict[str, str]) -> str:
        return template.format(level=next(cycle), k=next(counter))

    return handler


def keeping_level() -> Handler:
    """A paraphrase handler that keeps the instruction's level (and so its score); texts are unique."""
    counter = itertools.count()

    def handler(fields: dict[str, str]) -> str:
        return f"In other words (take {next(counter)}), handle the request at level {level(fields['instruction'])}."

    return handler


def reasons(fields: dict[str, str]) -> str:
    return "The level it asks for is too low.\nIt never names the expected format."


class World:
    """A responder: task requests get :func:`task_answer`, meta-prompts their role's handler."""

    def __init__(self, handlers: dict[str, Handler] | None = None, task: Callable | None = None) -> None:
        self.handlers = {"diagnose": reasons, **(handlers or {})}
        self.default = leveled([3, 6, 1, 7, 2, 5, 4, 8])
        self.task = task or task_answer

    def __call__(self, messages: list[dict[str, str]]) -> str:
        role = role_of(messages)
        if role is None:
            return self.task(messages)
        return self.handlers.get(role, self.default)(meta_fields(messages))


def fake_lm(engine: FakeEngine) -> dspy.LM:
    return dspy.LM(f"fake/test-optimizers-{next(_lm_ids)}", engine=engine, cache=False, num_retries=0)


def student_program(instruction: str = STUDENT_INSTRUCTION) -> dspy.Predict:
    return dspy.Predict(dspy.Signature("input -> output", instruction))


def compile_in(optimizer, student, engine: FakeEngine, *, train, val):
    with dspy.context(lm=fake_lm(engine), adapter=PlainAdapter()):
        return optimizer.compile(student, trainset=train, valset=val)


def task_requests(engine: FakeEngine) -> list[list[dict[str, str]]]:
    return [m for m in engine.requests if role_of(m) is None]


def meta_requests(engine: FakeEngine, role: str) -> list[dict[str, str]]:
    return [meta_fields(m) for m in engine.requests if role_of(m) == role]


def train_rows(program) -> list[dict]:
    return [r for r in compile_record(program).search.trials if r["split"] == "train"]


FAST = dict(max_bootstrapped_demos=0, max_labeled_demos=0, num_threads=1, max_lm_calls=5000)

#: Small but complete configurations of the five methods (kwargs override).
METHODS: dict[str, Callable[..., object]] = {
    "ape": lambda **kw: APE(metric, **{"num_candidates": 4, "top_k": 2, **kw}),
    "opro": lambda **kw: OPRO(metric, **{"proposals_per_step": 3, **kw}),
    "evoprompt-ga": lambda **kw: EvoPrompt(metric, **{"variant": "ga", "population_size": 4, **kw}),
    "evoprompt-de": lambda **kw: EvoPrompt(metric, **{"variant": "de", "population_size": 4, **kw}),
    "protegi": lambda **kw: ProTeGi(metric, **{"beam_width": 2, "bandit_pulls": 4, "bandit_batch": 3, **kw}),
}
#: The meta-prompt roles whose output becomes a candidate instruction, per method
#: (EvoPrompt's initial induce/paraphrase are left valid so a population exists).
PROPOSAL_ROLES = {
    "ape": ("induce", "paraphrase"),
    "opro": ("trajectory",),
    "evoprompt-ga": ("crossover",),
    "evoprompt-de": ("differential",),
    "protegi": ("edit", "paraphrase"),
}


# ---- helpers of the methods ------------------------------------------------------------------


def parse_trajectory(text: str) -> list[tuple[str, int]]:
    entries = [(m.group(1), int(m.group(2))) for m in re.finditer(r"Instruction: (.*)\nAccuracy: (-?\d+)", text)]
    assert len(entries) * 2 == len(text.splitlines()), text  # nothing else in the field
    return entries


def test_render_trajectory_sorts_ascending_and_rounds() -> None:
    text = render_trajectory([("best", 90.4), ("worst", 10.0), ("middle", 55.6)])
    assert text == (
        "Instruction: worst\nAccuracy: 10\nInstruction: middle\nAccuracy: 56\nInstruction: best\nAccuracy: 90"
    )
    assert parse_trajectory(text) == [("worst", 10), ("middle", 56), ("best", 90)]
    assert render_trajectory([]) == ""


def test_differing_parts_lists_only_where_the_donors_disagree() -> None:
    a = "Answer the question briefly and politely."
    b = "Answer the question in detail and politely."
    assert differing_parts(a, b) == '"briefly" vs "in detail"'
    assert differing_parts("Sort the words.", "Sort the words alphabetically.") == '"words." vs "words alphabetically."'
    assert differing_parts("Say yes.", "Say yes. Then stop.") == '"(nothing)" vs "Then stop."'
    assert differing_parts("one two three", "uno two tres") == '"one" vs "uno"\n"three" vs "tres"'
    assert differing_parts("Same text.", "Same text.") == "(the donors are identical)"


def test_format_failures_shows_input_expected_and_answer() -> None:
    text = format_failures([(item(3), {"output": "unknown"}), (item(5), None)])
    assert text == (
        "Input: please handle item number 3 now\nExpected: ITEM-3\nModel answered: unknown\n\n"
        "Input: please handle item number 5 now\nExpected: ITEM-5\nModel answered: (no answer)"
    )


def _chi_square(observed: Counter, expected: dict) -> float:
    return sum((observed.get(k, 0) - e) ** 2 / e for k, e in expected.items())


def test_roulette_pick_frequencies_follow_the_weights() -> None:
    rng = random.Random(1234)
    weights = [1.0, 2.0, 3.0, 4.0]
    draws = 20000
    counts = Counter(roulette_pick(rng, weights, k=1)[0] for _ in range(draws))
    expected = {i: draws * w / sum(weights) for i, w in enumerate(weights)}
    assert _chi_square(counts, expected) < 16.27  # chi-square, 3 dof, p = 0.001

    # Two distinct parents: an ordered pair (i, j) has probability w_i/W * w_j/(W - w_i).
    total = sum(weights)
    pairs = Counter(tuple(roulette_pick(rng, weights, k=2)) for _ in range(draws))
    assert all(i != j for i, j in pairs)
    expected_pairs = {
        (i, j): draws * (weights[i] / total) * (weights[j] / (total - weights[i]))
        for i in range(4)
        for j in range(4)
        if i != j
    }
    assert set(pairs) <= set(expected_pairs)
    assert _chi_square(pairs, expected_pairs) < 31.26  # 11 dof, p = 0.001


def test_roulette_pick_never_picks_zero_weights_while_others_are_positive() -> None:
    rng = random.Random(7)
    weights = [0.0, 3.0, 0.0, 1.0, -2.0]  # negative counts as zero
    singles = Counter(roulette_pick(rng, weights, k=1)[0] for _ in range(5000))
    assert set(singles) == {1, 3}
    assert singles[1] > 2 * singles[3]  # 3:1 odds
    pairs = Counter(tuple(sorted(roulette_pick(rng, weights, k=2))) for _ in range(2000))
    assert set(pairs) == {(1, 3)}


def test_roulette_pick_all_zero_weights_is_uniform() -> None:
    rng = random.Random(99)
    draws = 8000
    counts = Counter(roulette_pick(rng, [0.0] * 4, k=1)[0] for _ in range(draws))
    assert _chi_square(counts, {i: draws / 4 for i in range(4)}) < 16.27
    pairs = Counter(tuple(sorted(roulette_pick(rng, [0.0] * 4, k=2))) for _ in range(draws))
    assert len(pairs) == 6 and _chi_square(pairs, {p: draws / 6 for p in pairs}) < 20.52  # 5 dof
    with pytest.raises(ValueError):
        roulette_pick(rng, [1.0], k=2)


# ---- OPRO ------------------------------------------------------------------------------------


def test_opro_meta_prompt_holds_past_instructions_sorted_by_score() -> None:
    engine = FakeEngine(World({"trajectory": leveled([3, 7, 1, 5, 2, 6, 4, 8])}))
    opro = OPRO(metric, steps=3, proposals_per_step=3, trajectory_size=4, num_exemplars=2, minibatch_size=16, **FAST)
    program = compile_in(opro, student_program(), engine, train=dataset(16), val=dataset(16, 100))

    rows = train_rows(program)
    prompts = meta_requests(engine, "trajectory")
    assert len(prompts) == 3 * 3  # steps x proposals_per_step
    for step in (1, 2, 3):
        scored_before: dict[str, float] = {}
        for row in rows:
            if row["step"] < step:
                scored_before.setdefault(row["instructions"]["self"], row["score"])
        expected = sorted(scored_before.items(), key=lambda e: -e[1])[:4]  # scores are all distinct here
        expected.sort(key=lambda e: e[1])
        for fields in prompts[3 * (step - 1) : 3 * step]:
            entries = parse_trajectory(fields["scored_instructions"])
            accuracies = [a for _, a in entries]
            assert accuracies == sorted(accuracies), accuracies  # ascending: the best come last
            assert [t for t, _ in entries] == [t for t, _ in expected]
            assert accuracies == [round(s) for _, s in expected]
            assert fields["step"] == "input -> output"
            exemplars = fields["task_examples"].splitlines()
            assert len(exemplars) == 2
            assert all(
                re.fullmatch(r"Input: please handle item number (\d+) now -> Output: ITEM-\1", e) for e in exemplars
            )

    step2 = parse_trajectory(prompts[3]["scored_instructions"])
    # Proposed in the order levels 3, 7, 1; shown ascending, the student (0%) first.
    assert [level(t) for t, _ in step2] == [0, 1, 3, 7]
    step3 = parse_trajectory(prompts[6]["scored_instructions"])
    assert len(step3) == 4 and [level(t) for t, _ in step3] == [3, 5, 6, 7]  # top 4 of 7 scored
    assert level(program.signature.instructions) == 8  # the best proposal (step 3) wins


# ---- APE -------------------------------------------------------------------------------------


def test_ape_resampling_is_seeded_by_the_top_k() -> None:
    engine = FakeEngine(World({"induce": leveled([2, 6, 1, 7, 3]), "paraphrase": keeping_level()}))
    ape = APE(metric, num_candidates=5, top_k=2, variants_per_survivor=2, steps=1, minibatch_size=16, **FAST)
    program = compile_in(ape, student_program(), engine, train=dataset(16), val=dataset(16, 100))

    initial = {r["instructions"]["self"]: (r["score"], r["key"]) for r in train_rows(program) if r["step"] == 0}
    assert len(initial) == 6  # the student and 5 inductions, one minibatch
    ranked = sorted(initial, key=lambda t: -initial[t][0])
    top2 = ranked[:2]
    assert [level(t) for t in top2] == [7, 6]  # induced 2nd and 4th: ranking, not order

    paraphrased = Counter(f["instruction"] for f in meta_requests(engine, "paraphrase"))
    assert paraphrased == Counter({top2[0]: 2, top2[1]: 2})  # exactly the survivors, variants_per_survivor each
    survivor_keys = {initial[t][1] for t in top2}
    resampled = [r for r in compile_record(program).search.trials if r["origin"] == "ape.resample1"]
    assert resampled and all(set(r["parents"]) <= survivor_keys for r in resampled)


# ---- EvoPrompt -------------------------------------------------------------------------------


class RecordingEvoPrompt(EvoPrompt):
    """EvoPrompt that records each generation's population and the requests its proposals made."""

    def __init__(self, *args, engine: FakeEngine, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.engine = engine
        self.generations: list[dict] = []

    def propose(self, run, state, population, step):
        before = len(self.engine.requests)
        children = super().propose(run, state, population, step)
        self.generations.append(
            {
                "members": [(c.instruction("self"), run.store.get(c.key).mean) for c in population],
                "requests": self.engine.requests[before:],
            }
        )
        return children

    def select(self, run, state, population, children):
        survivors = super().select(run, state, population, children)
        if self.generations and population:
            self.generations[-1]["children"] = [(c.instruction("self"), run.store.get(c.key).mean) for c in children]
            by_key = {c.key: c.instruction("self") for c in population}
            self.generations[-1]["trials"] = {
                by_key[c.meta["replaces"]]: (c.instruction("self"), run.store.get(c.key).mean)
                for c in children
                if c.meta.get("replaces") in by_key
            }
            self.generations[-1]["next"] = [c.instruction("self") for c in survivors]
        return survivors


def test_ga_crossover_parents_are_population_members_picked_by_roulette() -> None:
    engine = FakeEngine(
        World(
            {
                "induce": leveled([5, 7]),
                "paraphrase": leveled([2]),
                "crossover": leveled([4, 6, 1, 3, 8, 2]),
            }
        )
    )
    ga = RecordingEvoPrompt(metric, engine=engine, variant="ga", population_size=4, steps=2, minibatch_size=16, **FAST)
    program = compile_in(ga, student_program(), engine, train=dataset(16), val=dataset(16, 100))

    assert len(ga.generations) == 2
    first = ga.generations[0]["members"]
    assert sorted(level(t) for t, _ in first) == [0, 2, 5, 7]  # student + induce, paraphrase, induce
    for generation in ga.generations:
        members = dict(generation["members"])
        positive = [t for t, w in members.items() if w > 0]
        crossovers = [meta_fields(m) for m in generation["requests"] if role_of(m) == "crossover"]
        assert len(crossovers) == len(members)
        for fields in crossovers:
            p1, p2 = fields["parent_1"], fields["parent_2"]
            assert p1 in members and p2 in members and p1 != p2
            if len(positive) >= 2:  # roulette: a zero-score member is never a parent
                assert members[p1] > 0 and members[p2] > 0
        # Selection: the next population is the top N of parents and children.
        pool = {**members, **dict(generation["children"])}
        best = sorted(pool.values(), reverse=True)[:4]
        assert sorted((pool[t] for t in generation["next"]), reverse=True) == best
    assert STUDENT_INSTRUCTION not in {
        meta_fields(m)[p] for m in engine.requests if role_of(m) == "crossover" for p in ("parent_1", "parent_2")
    }
    assert level(program.signature.instructions) == 8


def test_de_prompt_carries_the_difference_of_two_donors() -> None:
    engine = FakeEngine(
        World(
            {
                "induce": leveled([5, 7], "Handle the {k} request carefully at level {level}."),
                "paraphrase": leveled([2], "Please process this request at level {level} now ({k})."),
                "differential": leveled([1, 8, 3, 6, 2, 4, 7, 5]),
            }
        )
    )
    de = RecordingEvoPrompt(metric, engine=engine, variant="de", population_size=4, steps=2, minibatch_size=16, **FAST)
    compile_in(de, student_program(), engine, train=dataset(16), val=dataset(16, 100))

    assert len(de.generations) == 2
    outcomes = Counter()
    for generation in de.generations:
        members = dict(generation["members"])
        best = max(members, key=members.get)
        prompts = [meta_fields(m) for m in generation["requests"] if role_of(m) == "differential"]
        assert sorted(f["current_instruction"] for f in prompts) == sorted(members)  # one per member
        for fields in prompts:
            current = fields["current_instruction"]
            assert fields["best_instruction"] == best
            donors = [
                (x, y)
                for x in members
                for y in members
                if len({x, y, current}) == 3 and differing_parts(x, y) == fields["differing_parts"]
            ]
            assert donors, f"no pair of donors gives {fields['differing_parts']!r}"
            x, y = donors[0]
            for line in fields["differing_parts"].splitlines():  # each line: a part of x vs a part of y
                left, right = re.fullmatch(r'"(.*)" vs "(.*)"', line).groups()
                assert left == "(nothing)" or left in x
                assert right == "(nothing)" or right in y
        # Selection: a member is replaced by its trial only if the trial scores higher.
        for member, survivor in zip(generation["members"], generation["next"]):
            text, score = member
            trial = generation["trials"].get(text)
            if trial is not None and trial[1] > score:
                assert survivor == trial[0]
                outcomes["replaced"] += 1
            else:
                assert survivor == text
                outcomes["kept"] += 1
    assert outcomes["replaced"] and outcomes["kept"]  # both branches of the selection were exercised


# ---- ProTeGi ---------------------------------------------------------------------------------


class RecordingProTeGi(ProTeGi):
    """ProTeGi that records, per beam selection, how many (candidate, example) pairs were scored."""

    def __init__(self, *args, engine: FakeEngine, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.engine = engine
        self.selections: list[dict] = []

    def select(self, run, state, population, children):
        arms = population + children
        before = len(self.engine.requests)
        beam = super().select(run, state, population, children)
        self.selections.append(
            {
                "arms": len(arms),
                "pool": len(run.search_pool),
                "n_scored": [run.store.get(c.key).n_scored if c.key in run.store else 0 for c in arms],
                "task_calls": len([m for m in self.engine.requests[before:] if role_of(m) is None]),
                "beam": len(beam),
            }
        )
        return beam


def test_protegi_gradient_prompt_holds_the_failing_examples_only() -> None:
    engine = FakeEngine(World({"edit": leveled([6, 2, 5, 7]), "paraphrase": keeping_level()}))
    protegi = RecordingProTeGi(
        metric,
        engine=engine,
        beam_width=2,
        num_gradients=2,
        errors_per_gradient=3,
        paraphrases_per_edit=1,
        bandit_pulls=4,
        bandit_batch=3,
        steps=2,
        minibatch_size=8,
        **FAST,
    )
    student_instruction = "Handle the request at level 4."  # solves i % 8 < 4: half of any balanced batch
    compile_in(protegi, student_program(student_instruction), engine, train=dataset(40), val=dataset(16, 100))

    diagnose = [(i, meta_fields(m)) for i, m in enumerate(engine.requests) if role_of(m) == "diagnose"]
    assert diagnose
    block = re.compile(r"Input: please handle item number (\d+) now\nExpected: (.*)\nModel answered: (.*)")
    for _, fields in diagnose:
        shown = [(int(i), expected, got) for i, expected, got in block.findall(fields["failures"])]
        assert 1 <= len(shown) <= 3 and len(shown) == fields["failures"].count("Input:")
        for i, expected, got in shown:
            assert not solves(fields["instruction"], i)  # a failing example ...
            assert expected == f"ITEM-{i}" and got == "unknown"  # ... with its label and the wrong answer

    # The first gradient prompt: the student's minibatch had right and wrong answers; only wrong ones are shown.
    first_index, first = diagnose[0]
    assert first["instruction"] == student_instruction
    batch = [item_number(m[-1]["content"]) for m in engine.requests[:first_index] if role_of(m) is None]
    assert len(batch) == 8
    right = {i for i in batch if solves(student_instruction, i)}
    wrong = {i for i in batch if not solves(student_instruction, i)}
    shown = {int(i) for i, _, _ in block.findall(first["failures"])}
    assert right and wrong
    assert shown <= wrong and not shown & right and len(shown) == min(3, len(wrong))


def test_protegi_bandit_scores_fewer_pairs_than_exhaustive_scoring() -> None:
    engine = FakeEngine(World({"edit": leveled([6, 2, 5, 7]), "paraphrase": keeping_level()}))
    protegi = RecordingProTeGi(
        metric,
        engine=engine,
        beam_width=2,
        num_gradients=2,
        errors_per_gradient=3,
        paraphrases_per_edit=1,
        bandit_pulls=4,
        bandit_batch=3,
        steps=2,
        minibatch_size=8,
        **FAST,
    )
    compile_in(
        protegi, student_program("Handle the request at level 4."), engine, train=dataset(40), val=dataset(16, 100)
    )

    bandits = [s for s in protegi.selections if s["arms"] > s["beam"]]
    assert len(bandits) == 2
    for s in bandits:
        exhaustive = s["arms"] * s["pool"]
        assert s["beam"] == 2
        assert all(n >= 1 for n in s["n_scored"])  # every arm is pulled at least once
        assert sum(s["n_scored"]) < exhaustive
        assert 0 < s["task_calls"] <= (s["arms"] + 4) * 3 < exhaustive  # (arms + pulls) x bandit_batch


# ---- common to every method --------------------------------------------------------------------


@pytest.mark.parametrize("cap", [7, 40, 150])
@pytest.mark.parametrize("method", list(METHODS))
def test_budget_cap_is_never_exceeded(method: str, cap: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dspy_ext")
    engine = FakeEngine(World({"paraphrase": keeping_level()}))
    optimizer = METHODS[method](
        max_lm_calls=cap,
        seed=0,
        steps=3,
        minibatch_size=6,
        num_threads=4,
        max_bootstrapped_demos=2,
        max_labeled_demos=2,
    )
    program = compile_in(optimizer, student_program(), engine, train=dataset(24), val=dataset(12, 100))

    result = compile_record(program).search
    assert engine.calls <= cap
    assert result.lm_calls <= cap
    assert result.lm_calls == engine.calls  # every call (task and prompt model) is counted
    assert isinstance(program, dspy.Predict)
    evaluated = {r["instructions"]["self"] for r in result.trials} | {STUDENT_INSTRUCTION}
    assert program.signature.instructions == result.best["instructions"]["self"]
    assert program.signature.instructions in evaluated  # the best candidate so far
    assert any("projected about" in r.getMessage() for r in caplog.records)
    if cap <= 40:
        assert result.budget_exhausted
        assert any(r.levelno == logging.WARNING and "budget" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("method", list(METHODS))
def test_budget_counts_prompt_and_task_model_together(method: str) -> None:
    world = World({"paraphrase": keeping_level()})
    task_engine, prompt_engine = FakeEngine(world), FakeEngine(world)
    optimizer = METHODS[method](
        max_lm_calls=60,
        seed=0,
        steps=3,
        minibatch_size=6,
        task_model=fake_lm(task_engine),
        prompt_model=fake_lm(prompt_engine),
        max_bootstrapped_demos=0,
        max_labeled_demos=0,
        num_threads=1,
    )
    with dspy.context(adapter=PlainAdapter()):
        program = optimizer.compile(student_program(), trainset=dataset(24), valset=dataset(12, 100))

    assert prompt_engine.calls > 0 and task_engine.calls > 0
    assert all(role_of(m) is not None for m in prompt_engine.requests)  # meta-prompts go to the prompt model
    assert all(role_of(m) is None for m in task_engine.requests)
    assert task_engine.calls + prompt_engine.calls <= 60
    assert compile_record(program).search.lm_calls == task_engine.calls + prompt_engine.calls


def boost_task(messages: list[dict[str, str]]) -> str:
    """Two-step task: a 'BOOST' in the draft instruction and one in the answer instruction each solve half."""
    system, user = messages[0]["content"], messages[-1]["content"]
    if "\nNotes:" not in user:  # the draft step
        return "boosted notes" if "BOOST" in system else "plain notes"
    boosts = int("BOOST" in system) + int("Notes: boosted notes" in user)
    i = item_number(user)
    return f"ITEM-{i}" if i % 2 < boosts else "unknown"


@pytest.mark.parametrize("method", list(METHODS))
def test_two_predictor_program_gets_both_predictors_optimized(method: str) -> None:
    from programs import DraftThenAnswer

    boost = leveled([0], "Handle it with BOOST, variant {k}.")
    engine = FakeEngine(World({role: boost for role in DEFAULT_META_PROMPTS if role != "diagnose"}, task=boost_task))
    student = DraftThenAnswer(instructions=STUDENT_INSTRUCTION)
    before = {"draft": student.draft.signature.instructions, "answer": student.answer.signature.instructions}
    optimizer = METHODS[method](seed=0, steps=2, minibatch_size=8, **FAST)
    program = compile_in(optimizer, student, engine, train=dataset(16), val=dataset(10, 100))

    for name in ("draft", "answer"):
        instruction = getattr(program, name).signature.instructions
        assert instruction != before[name]
        assert "BOOST" in instruction
    assert compile_record(program).search.val_score == 100.0
    assert {student.draft.signature.instructions, student.answer.signature.instructions} == set(before.values())


class Ticket(dspy.Signature):
    """Reply to the request."""

    input: str = dspy.InputField()
    output: str = dspy.OutputField()


@pytest.mark.parametrize("method", list(METHODS))
def test_student_is_untouched_and_result_is_a_new_program(method: str) -> None:
    student = dspy.Predict(Ticket)
    student.demos = [dspy.Example(input="please handle item number 999 now", output="ITEM-999")]
    signature, fields = student.signature, list(Ticket.fields)
    demos_before = [d.toDict() for d in student.demos]
    engine = FakeEngine(World({"paraphrase": keeping_level()}))
    optimizer = METHODS[method](
        seed=0,
        steps=2,
        minibatch_size=6,
        max_bootstrapped_demos=1,
        max_labeled_demos=2,
        num_threads=2,
        max_lm_calls=3000,
    )
    program = compile_in(optimizer, student, engine, train=dataset(24), val=dataset(12, 100))

    assert student.signature is signature is Ticket
    assert Ticket.instructions == "Reply to the request." and Ticket.__doc__ == "Reply to the request."
    assert list(Ticket.fields) == fields
    assert [d.toDict() for d in student.demos] == demos_before
    assert program is not student
    assert program.signature is not Ticket and issubclass(program.signature, dspy.Signature)
    assert program.signature.instructions != Ticket.instructions  # it did optimize ...
    assert list(program.signature.fields) == fields  # ... only the instruction


def _fingerprint(program) -> tuple:
    result = compile_record(program).search
    return (
        result.best["instructions"],
        result.best["demo_sets"],
        result.val_score,
        [(r["key"], r["split"], r["step"], r["n"], r["score"], r["origin"]) for r in result.trials],
    )


def _seeded_run(method: str, seed: int) -> tuple[tuple, list[int]]:
    engine = FakeEngine(World({"paraphrase": keeping_level()}))
    optimizer = METHODS[method](
        seed=seed,
        steps=2,
        minibatch_size=4,
        max_bootstrapped_demos=1,
        max_labeled_demos=1,
        num_threads=1,
        max_lm_calls=3000,
    )
    program = compile_in(optimizer, student_program(), engine, train=dataset(20), val=dataset(8, 100))
    return _fingerprint(program), [item_number(m[-1]["content"]) for m in task_requests(engine)]


@pytest.mark.parametrize("method", list(METHODS))
def test_same_seed_same_result_and_seed_zero_is_honoured(method: str) -> None:
    first, inputs_first = _seeded_run(method, 0)
    again, inputs_again = _seeded_run(method, 0)
    assert first == again and inputs_first == inputs_again
    one, inputs_one = _seeded_run(method, 1)
    nine, inputs_nine = _seeded_run(method, 9)  # MIPROv2 turns seed 0 into 9
    # The examples drawn (demos, minibatches) depend on the seed: 0 is a seed of its own.
    assert inputs_first != inputs_one
    assert inputs_first != inputs_nine
    assert optimizer_seed(method, 0) == 0


def optimizer_seed(method: str, seed: int) -> int:
    return METHODS[method](seed=seed).seed


@pytest.mark.parametrize("method", list(METHODS))
def test_zero_demos_mean_zero_demos(method: str) -> None:
    engine = FakeEngine(World({"paraphrase": keeping_level()}))
    optimizer = METHODS[method](
        seed=0, steps=2, minibatch_size=6, max_bootstrapped_demos=0, max_labeled_demos=0, num_demo_sets=3, num_threads=1
    )
    program = compile_in(optimizer, student_program(), engine, train=dataset(16), val=dataset(8, 100))

    result = compile_record(program).search
    assert result.demo_sets == 1
    assert program.demos == []
    assert result.best["n_demos"] == {"self": 0}
    assert all(r["n_demos"] == {"self": 0} for r in result.trials)
    assert all(len(m) == 2 for m in task_requests(engine))  # system + user: no demo turns reach the model


def test_demos_are_built_when_asked_for() -> None:
    """Control for the zero-demo test: with demos allowed, demo sets exist and reach the prompts."""
    engine = FakeEngine(World({"paraphrase": keeping_level()}))
    ape = APE(
        metric,
        seed=0,
        steps=1,
        num_candidates=3,
        top_k=2,
        minibatch_size=6,
        max_bootstrapped_demos=1,
        max_labeled_demos=2,
        num_demo_sets=3,
        num_threads=1,
    )
    program = compile_in(ape, student_program(), engine, train=dataset(16), val=dataset(8, 100))
    assert compile_record(program).search.demo_sets > 1
    assert any(r["n_demos"]["self"] > 0 for r in compile_record(program).search.trials)
    assert any(len(m) > 2 for m in task_requests(engine))


def _replying(method: str, reply: Callable[[dict[str, str]], str]) -> World:
    return World(
        {
            "induce": leveled([5, 7], "Handle the {k} request carefully at level {level}."),
            "paraphrase": leveled([2], "Please process this request at level {level} now ({k})."),
            **{role: reply for role in PROPOSAL_ROLES[method]},
        }
    )


@pytest.mark.parametrize("method", list(METHODS))
def test_duplicate_proposals_are_not_re_evaluated(method: str) -> None:
    same = "Always handle the request at level 5."
    engine = FakeEngine(_replying(method, lambda fields: same))
    optimizer = METHODS[method](seed=0, steps=3, minibatch_size=16, **FAST)
    program = compile_in(optimizer, student_program(), engine, train=dataset(16), val=dataset(8, 100))

    result = compile_record(program).search
    assert result.rejected.get("duplicate", 0) >= 1
    rows = [r for r in result.trials if r["instructions"]["self"] == same]
    assert len({r["key"] for r in rows}) == 1  # one candidate, however often it was proposed
    # No (instruction, example) pair ever reaches the task model twice.
    repeated = [
        k for k, n in Counter((m[0]["content"], m[-1]["content"]) for m in task_requests(engine)).items() if n > 1
    ]
    assert repeated == []
    assert sum(1 for m in task_requests(engine) if m[0]["content"] == same) <= 16 + 8


# Longer than the proposal token cap (150): the fake engine cuts it off and reports finish reason "length".
LONG_UNTERMINATED = "Handle the request at level 8 " + "and keep going with more and more words " * 25


@pytest.mark.parametrize(
    ("reply", "reason"),
    [("", "lm_or_parse_error"), ('""', "empty"), ("   ", "lm_or_parse_error"), (LONG_UNTERMINATED, "truncated")],
    ids=["empty-reply", "empty-quotes", "blank", "cut-off"],
)
@pytest.mark.parametrize("method", list(METHODS))
def test_cut_off_or_empty_proposal_is_never_adopted(method: str, reply: str, reason: str) -> None:
    engine = FakeEngine(_replying(method, lambda fields: reply))
    optimizer = METHODS[method](seed=0, steps=2, minibatch_size=8, **FAST)
    program = compile_in(optimizer, student_program(), engine, train=dataset(16), val=dataset(8, 100))

    result = compile_record(program).search
    assert result.rejected.get(reason, 0) >= 1
    used = {m[0]["content"] for m in task_requests(engine)}
    assert not any("keep going" in text for text in used)  # never even evaluated
    assert "keep going" not in program.signature.instructions and program.signature.instructions.strip()
    if method in ("ape", "opro", "protegi"):  # every proposal was bad: the student's instruction stays
        assert program.signature.instructions == STUDENT_INSTRUCTION


def test_tag_wrapped_proposals_are_unwrapped_and_empty_ones_rejected() -> None:
    replies = iter(["<instruction> </instruction>", "<instruction>Handle the request at level 8.</instruction>"])
    engine = FakeEngine(World({"trajectory": lambda fields: next(replies, "Handle the request at level 1.")}))
    opro = OPRO(metric, seed=0, steps=1, proposals_per_step=2, minibatch_size=8, **FAST)
    program = compile_in(opro, student_program(), engine, train=dataset(16), val=dataset(8, 100))
    assert compile_record(program).search.rejected.get("empty", 0) == 1
    assert {m[0]["content"] for m in task_requests(engine)} == {STUDENT_INSTRUCTION, "Handle the request at level 8."}
    assert program.signature.instructions == "Handle the request at level 8."


class LengthLimitedEngine(FakeEngine):
    """Reports ``finish_reason="length"`` for meta-prompts: every proposal was cut at max_tokens."""

    def generate(self, request):
        generation = super().generate(request)
        if role_of(request_messages(request)) is not None:
            return Generation(generation.text, generation.input_tokens, generation.output_tokens, "length")
        return generation


@pytest.mark.parametrize("method", ["ape", "opro", "protegi"])
def test_proposal_stopped_at_max_tokens_is_never_adopted(method: str) -> None:
    engine = LengthLimitedEngine(World({"paraphrase": keeping_level()}))  # short, well-formed, but cut off
    optimizer = METHODS[method](seed=0, steps=2, minibatch_size=8, **FAST)
    program = compile_in(optimizer, student_program(), engine, train=dataset(16), val=dataset(8, 100))
    result = compile_record(program).search
    assert result.rejected.get("truncated", 0) >= 1
    assert set(result.rejected) == {"truncated"}
    assert program.signature.instructions == STUDENT_INSTRUCTION
    assert {m[0]["content"] for m in task_requests(engine)} == {STUDENT_INSTRUCTION}


class EchoWorld(World):
    """A prompt model that answers a meta-prompt with its own instructions, or with a training input."""

    def __init__(self, method: str, mode: str) -> None:
        super().__init__(
            {
                "induce": leveled([5, 7], "Handle the {k} request carefully at level {level}."),
                "paraphrase": leveled([2], "Please process this request at level {level} now ({k})."),
            }
        )
        self.roles = PROPOSAL_ROLES[method]
        self.mode = mode

    def __call__(self, messages):
        role = role_of(messages)
        if role in self.roles:
            if self.mode == "meta":  # the meta-prompt's own instructions, level 8 added to be tempting
                return "At level 8: " + messages[0]["content"]
            return "At level 8, reply like this: please handle item number 3 now."
        return super().__call__(messages)


@pytest.mark.parametrize(("mode", "reason"), [("meta", "meta_prompt_leak"), ("input", "training_data_leak")])
@pytest.mark.parametrize("method", list(METHODS))
def test_leaking_proposals_are_rejected(method: str, mode: str, reason: str) -> None:
    engine = FakeEngine(EchoWorld(method, mode))
    optimizer = METHODS[method](seed=0, steps=2, minibatch_size=8, **FAST)
    program = compile_in(optimizer, student_program(), engine, train=dataset(16), val=dataset(8, 100))

    result = compile_record(program).search
    assert result.rejected.get(reason, 0) >= 1
    final = program.signature.instructions
    assert "please handle item number" not in final
    assert not any(text in final for text in META_TEXT.values())
    assert all("level 8" not in m[0]["content"] for m in task_requests(engine))  # never evaluated


def test_training_labels_do_not_leak_into_the_instruction() -> None:
    labels = {i: f"ticket {i} was resolved and closed for the customer" for i in range(16)}
    train = [
        dspy.Example(input=f"please handle item number {i} now", output=labels[i]).with_inputs("input")
        for i in range(16)
    ]
    val = [
        dspy.Example(
            input=f"please handle item number {i} now", output=f"ticket {i} was resolved and closed for the customer"
        ).with_inputs("input")
        for i in range(100, 108)
    ]

    def task(messages):
        i = item_number(messages[-1]["content"])
        good = "level 8" in messages[0]["content"]
        return f"ticket {i} was resolved and closed for the customer" if good else "no idea"

    leak = f"At level 8, answer like: {labels[3]}."
    engine = FakeEngine(World({"trajectory": lambda fields: leak}, task=task))
    opro = OPRO(metric, seed=0, steps=1, proposals_per_step=1, minibatch_size=8, **FAST)
    program = compile_in(opro, student_program(), engine, train=train, val=val)
    assert not any(label in program.signature.instructions for label in labels.values())


@pytest.mark.parametrize("method", ["evoprompt-ga", "evoprompt-de"])
def test_evoprompt_survives_an_initial_population_of_rejected_proposals(method: str) -> None:
    """When every initial proposal is rejected (or duplicate), the search must still return a program."""
    engine = FakeEngine(World({"induce": lambda f: '""', "paraphrase": lambda f: '""'}))
    optimizer = METHODS[method](seed=0, steps=2, minibatch_size=8, **FAST)
    program = compile_in(optimizer, student_program(), engine, train=dataset(16), val=dataset(8, 100))
    assert compile_record(program).search.rejected.get("empty", 0) >= 1
    assert program.signature.instructions == STUDENT_INSTRUCTION


@pytest.mark.parametrize("method", list(METHODS))
def test_candidate_whose_every_evaluation_fails_does_not_break_the_search(method: str) -> None:
    """Errors are reported, not scored: a candidate with only failed rows has no score, and the run goes on."""
    poison = leveled([8], "POISON: handle the request at level {level}, variant {k}.")
    engine = FakeEngine(
        _replying(method, poison), fail_when=lambda m: role_of(m) is None and "POISON" in m[0]["content"]
    )
    optimizer = METHODS[method](seed=0, steps=2, minibatch_size=8, **FAST)
    program = compile_in(optimizer, student_program(), engine, train=dataset(16), val=dataset(8, 100))
    poisoned = [r for r in compile_record(program).search.trials if "POISON" in r["instructions"]["self"]]
    assert poisoned and all(r["errors"] for r in poisoned)
    assert "POISON" not in program.signature.instructions


@pytest.mark.parametrize("method", list(METHODS))
def test_task_model_errors_in_a_run_are_logged_on_trial_rows(method: str) -> None:
    """Every failed task call shows up as an ``lm_error`` on a trial row; failed rows are not scored as 0."""
    engine = FakeEngine(
        World({"paraphrase": keeping_level()}),
        fail_when=lambda m: role_of(m) is None and item_number(m[-1]["content"]) % 8 == 0,
    )
    optimizer = METHODS[method](seed=0, steps=2, minibatch_size=8, **FAST)
    program = compile_in(
        optimizer, student_program("Handle the request at level 8."), engine, train=dataset(16), val=dataset(8, 100)
    )

    failed = [m for m in task_requests(engine) if item_number(m[-1]["content"]) % 8 == 0]
    rows = compile_record(program).search.trials
    assert failed
    assert sum(r["errors"].get("lm_error", 0) for r in rows) == len(failed)
    student_rows = [r for r in rows if r["instructions"]["self"] == "Handle the request at level 8."]
    assert any(r["errors"] for r in student_rows)
    assert all(r["score"] == 100.0 for r in student_rows)  # it solves every row that ran


@pytest.mark.parametrize("method", list(METHODS))
def test_a_candidate_whose_rows_mostly_failed_is_never_adopted(method: str) -> None:
    """The level-8 instruction would solve every row, but its calls fail on 3 rows in 4: it is set aside."""
    flaky = "Handle the request at level 8, the flaky one."

    def fails(messages: list[dict[str, str]]) -> bool:
        return (
            role_of(messages) is None
            and messages[0]["content"] == flaky
            and item_number(messages[-1]["content"]) % 4 != 0
        )

    engine = FakeEngine(_replying(method, lambda fields: flaky), fail_when=fails)
    optimizer = METHODS[method](seed=0, steps=2, minibatch_size=8, **FAST)
    program = compile_in(optimizer, student_program(), engine, train=dataset(16), val=dataset(8, 100))

    result = compile_record(program).search
    flaky_rows = [r for r in result.trials if r["instructions"]["self"] == flaky]
    assert flaky_rows and any(r["errors"]["lm_error"] > 0 for r in flaky_rows)  # it was tried, and failed
    assert program.signature.instructions != flaky
    assert result.best["instructions"]["self"] != flaky
