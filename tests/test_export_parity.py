"""Parity of the exported templates with DSPy: rendered messages and parsed replies, per adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import dspy
import pydantic
import pytest
from dspy.utils.exceptions import AdapterParseError

from dspy_ext.adapters import PlainAdapter
from dspy_ext.export import ExportError, ParseError, build_artifact, export, load
from dspy_ext.prompt_state import predictors
from programs import ChainOfThoughtProgram, Classify, DraftThenAnswer

ADAPTERS = {
    "chat": dspy.ChatAdapter,
    "json": dspy.JSONAdapter,
    "plain": PlainAdapter,
    "plain_hint": lambda: PlainAdapter(format_hint=True),
    "chat_no_fallback": lambda: dspy.ChatAdapter(use_json_adapter_fallback=False),
}

BRACES = 'Use {curly} braces, {{double}} ones, {0} and a JSON-ish {"k": 1}.'


class Review(dspy.Signature):
    """Rate the review. Braces stay literal: {label} {{label}} {}."""

    review: str = dspy.InputField(desc="the text {as written}")
    aspects: list[str] = dspy.InputField()
    notes: list[str] | None = dspy.InputField()
    stars: int = dspy.InputField()
    label: Literal["positive", "negative"] = dspy.OutputField(desc="one of {positive, negative}")
    confidence: float = dspy.OutputField()
    keywords: list[str] = dspy.OutputField()


REVIEW_DEMOS = [
    dspy.Example(
        review="Loved it {really}",
        aspects=["plot", "{cast}"],
        notes=["n1"],
        stars=5,
        label="positive",
        confidence=0.9,
        keywords=["loved"],
    ),
    # Incomplete demo: DSPy renders these first, with a special prefix.
    dspy.Example(review="Meh {{}}", aspects=[], stars=2, label="negative"),
    {
        "review": "multi\nline",
        "aspects": ["x\ny"],
        "notes": None,
        "stars": 3,
        "label": "negative",
        "confidence": 0.5,
        "keywords": [],
    },
]

REVIEW_INPUTS = [
    {"review": "Great {fun} film {{x}}", "aspects": ["acting", "«score»"], "notes": ["a\nb"], "stars": 4},
    {"review": BRACES, "aspects": [], "notes": None, "stars": 1},
    {"review": "⟦input:aspects⟧ is literal text", "aspects": ["only one"], "notes": [], "stars": 0},
]


class TwoPredictors(dspy.Module):
    """Two Predicts plus a frozen (already compiled) sub-program."""

    def __init__(self) -> None:
        super().__init__()
        self.summarize = dspy.Predict(dspy.Signature("passage: str, hints: list[str] -> summary", BRACES))
        self.answer = dspy.Predict(
            dspy.Signature("summary: str, question: str -> answer: str, sources: list[str]", "Answer {briefly}.")
        )
        frozen = dspy.Predict(dspy.Signature("question -> category", "Categorise the {question}."))
        frozen.demos = [dspy.Example(question="q {1}", category="misc")]
        self.router = dspy.Module()
        self.router.pick = frozen
        self.router._compiled = True

    def forward(self, passage: str, hints: list[str], question: str) -> dspy.Prediction:
        summary = self.summarize(passage=passage, hints=hints).summary
        return self.answer(summary=summary, question=question)


def _review_program() -> dspy.Predict:
    program = dspy.Predict(Review)
    program.demos = list(REVIEW_DEMOS)
    return program


def _two_predictors() -> TwoPredictors:
    program = TwoPredictors()
    program.summarize.demos = [dspy.Example(passage="p {x}", hints=["h1", "h2"], summary="s {y}")]
    program.answer.demos = [dspy.Example(summary="s", question="q?", answer="a {}", sources=["doc {1}"])]
    return program


def _cot() -> ChainOfThoughtProgram:
    program = ChainOfThoughtProgram(("question", "context"), ("answer",), instructions=BRACES)
    program.cot.predict.demos = [
        dspy.Example(question="2+2 {sum}?", context="math", reasoning="add {them}", answer="4"),
        dspy.Example(question="capital?", context="geo", answer="Paris"),  # no reasoning: incomplete demo
    ]
    return program


PROGRAMS = {
    "single": (_review_program, {"self": REVIEW_INPUTS}),
    "multi": (
        _two_predictors,
        {
            "summarize": [{"passage": "text {a} {{b}}", "hints": ["h {1}", "h2"]}, {"passage": "", "hints": []}],
            "answer": [{"summary": "S {x}", "question": "why {not}?"}],
            "router.pick": [{"question": "{{route}} me"}],
        },
    ),
    "cot": (
        _cot,
        {
            "cot.predict": [
                {"question": "why {x}?", "context": ["c1", "c {2}"]},
                {"question": "q", "context": "plain {ctx}"},
            ]
        },
    ),
    "draft_then_answer": (
        lambda: DraftThenAnswer(instructions=BRACES),
        {
            "draft": [{"input": "cats {x}"}],
            "answer": [{"input": "cats", "notes": "n {{1}}"}],
        },
    ),
    "classify": (
        lambda: Classify(["positive", "negative"], instructions=BRACES),
        {
            "predict": [{"input": "a {good} one"}, {"input": ["list", "input"]}],
        },
    ),
}


@pytest.mark.parametrize("adapter_name", list(ADAPTERS))
@pytest.mark.parametrize("program_name", list(PROGRAMS))
def test_rendered_messages_equal_adapter_format(tmp_path: Path, adapter_name: str, program_name: str) -> None:
    make, inputs_by_predictor = PROGRAMS[program_name]
    program = make()
    adapter = ADAPTERS[adapter_name]()
    export(program, tmp_path / "a.json", adapter=adapter)
    art = load(tmp_path / "a.json")
    found = dict(predictors(program))
    assert set(art.names) == set(found) == set(inputs_by_predictor)
    for name, input_sets in inputs_by_predictor.items():
        predictor = found[name]
        for inputs in input_sets:
            if adapter_name.startswith("plain") and any(v is None for v in inputs.values()):
                continue  # the PlainAdapter drops None inputs; render refuses them (tested in the runtime tests)
            expected = adapter.format(predictor.signature, predictor.demos, inputs)
            assert art.render(name, **inputs) == expected
            if adapter_name == "chat":
                assert art.render_fallback(name, **inputs) == dspy.JSONAdapter().format(
                    predictor.signature, predictor.demos, inputs
                )
            else:
                assert not art.has_fallback(name)


def test_frozen_sub_program_is_exported() -> None:
    program = _two_predictors()
    assert "router.pick" not in [n for n, _ in program.named_predictors()]  # what DSPy's own save would miss
    art = build_artifact(program, adapter=dspy.ChatAdapter())
    assert art.names == ("summarize", "answer", "router.pick")
    assert art.predictor("router.pick")["demos"] == [{"question": "q {1}", "category": "misc"}]


def _reply_for(adapter: dspy.Adapter, messages: list[dict[str, str]]) -> str:
    if isinstance(adapter, dspy.JSONAdapter):
        return '{"label": "positive", "confidence": 0.75, "keywords": ["fun"]}'
    if isinstance(adapter, PlainAdapter):
        return 'Label: positive\nConfidence: 0.75\nKeywords: ["fun"]'
    return (
        '[[ ## label ## ]]\npositive\n\n[[ ## confidence ## ]]\n0.75\n\n[[ ## keywords ## ]]\n["fun"]\n\n'
        "[[ ## completed ## ]]"
    )


@pytest.mark.parametrize("adapter_name", ["chat", "json", "plain"])
def test_rendered_messages_equal_what_the_lm_receives(fake_lm, adapter_name: str) -> None:
    adapter = ADAPTERS[adapter_name]()
    lm = fake_lm(lambda messages: _reply_for(adapter, messages))
    program = _review_program()
    art = build_artifact(program, adapter=adapter, lm=lm)
    inputs = REVIEW_INPUTS[0]
    with dspy.context(lm=lm, adapter=adapter):
        prediction = program(**inputs)
    assert lm.engine.requests == [art.render("self", **inputs)]
    assert art.parse("self", _reply_for(adapter, [])) == dict(prediction.items())
    assert art.lm["model"] == lm.model


# --- parse parity -----------------------------------------------------------------------------

CHAT_REPLIES = [
    (
        '[[ ## label ## ]]\npositive\n\n[[ ## confidence ## ]]\n0.8\n\n[[ ## keywords ## ]]\n["a", "b"]\n\n'
        "[[ ## completed ## ]]"
    ),
    "preamble\n[[ ## label ## ]] negative\n[[ ## confidence ## ]] 1\n[[ ## keywords ## ]] []",
    "  [[ ## label ## ]]   positive\n[[ ## confidence ## ]]\n.5\n[[ ## keywords ## ]]\n['x']",
    "[[ ## label ## ]]\n'positive'\n[[ ## label ## ]]\nnegative\n[[ ## confidence ## ]]\n2\n[[ ## keywords ## ]]\n[]",
    "[[ ## label ## ]]\nneutral\n[[ ## confidence ## ]]\n0.1\n[[ ## keywords ## ]]\n[]",
    "[[ ## label ## ]]\npositive\n[[ ## confidence ## ]]\nhigh\n[[ ## keywords ## ]]\n[]",
    "[[ ## label ## ]]\npositive\n[[ ## keywords ## ]]\n[]",
    "just text",
    "",
]
JSON_REPLIES = [
    '{"label": "positive", "confidence": 0.8, "keywords": ["a"]}',
    '```json\n{"label": "negative", "confidence": "0.25", "keywords": []}\n```',
    'Sure! {"label": "positive", "confidence": 1, "keywords": ["{x}"]} hope that helps',
    '{"label": "Literal[\'negative\']", "confidence": 0.5, "keywords": [], "extra": 1}',
    '{"label": "positive", "keywords": []}',
    '{"label": "maybe", "confidence": 0.5, "keywords": []}',
    '["not", "an", "object"]',
    "no json here",
    "",
]
PLAIN_REPLIES = [
    'Label: positive\nConfidence: 0.9\nKeywords: ["good"]',
    "**Label:** Negative\n**Confidence:** 0.1\n**Keywords:** []",
    '```\nlabel: positive\nconfidence: 1\nkeywords: ["a", "b"]\n```',
    "I think so.\nConfidence: 0.4\nKeywords: []",
    'Label: positive\nConfidence: 0.3\nmore words\n["z"]',
    "Label: positive\nKeywords: []",
    "Label: neutral\nConfidence: 0.5\nKeywords: []",
    "",
    "   \n  ",
]
PLAIN_SINGLE_REPLIES = [
    "positive",
    "Output: negative",
    "**Output:** positive.",
    "Output:\npositive",
    "Answer: negative",
    "```\npositive\n```",
    "positive\nbecause it is good",
    "",
    "\n\n",
]


def _parity(adapter: dspy.Adapter, signature: type[dspy.Signature], replies: list[str]) -> None:
    program = dspy.Predict(signature)
    art = build_artifact(program, adapter=adapter)
    for reply in replies:
        try:
            expected = adapter.parse(signature, reply) if reply else None
        except (AdapterParseError, ValueError, AttributeError):
            # AttributeError: PlainAdapter passes parsed_result=str(...) to AdapterParseError, whose
            # constructor calls .keys() on it; the reply is unparseable either way.
            expected = None
        if expected is None:
            with pytest.raises(ParseError):
                art.parse("self", reply)
        else:
            assert art.parse("self", reply) == expected, reply


REPLY_SIGNATURE = Review.delete("aspects").delete("notes").delete("stars")


@pytest.mark.parametrize(
    "adapter, replies",
    [(dspy.ChatAdapter(), CHAT_REPLIES), (dspy.JSONAdapter(), JSON_REPLIES), (PlainAdapter(), PLAIN_REPLIES)],
    ids=["chat", "json", "plain"],
)
def test_parse_matches_adapter_parse(adapter: dspy.Adapter, replies: list[str]) -> None:
    _parity(adapter, REPLY_SIGNATURE, replies)


def test_plain_single_field_parse_matches() -> None:
    _parity(PlainAdapter(), dspy.Signature("input -> output"), PLAIN_SINGLE_REPLIES)
    _parity(
        PlainAdapter(),
        dspy.Signature(
            {"input": (str, dspy.InputField()), "output": (Literal["positive", "negative"], dspy.OutputField())}
        ),
        PLAIN_SINGLE_REPLIES,
    )
    _parity(PlainAdapter(), dspy.Signature("input -> count: int"), ["3", "Count: 12", "twelve", "Count:\n4"])


def test_cot_plain_parse_matches() -> None:
    signature = _cot().cot.predict.signature
    replies = ["Reasoning: it adds up\nAnswer: 4", "It adds up.\nSo:\n4", "Answer: 4", "just one line"]
    _parity(PlainAdapter(), signature, replies)


def test_chat_run_falls_back_to_json_like_dspy(fake_lm) -> None:
    replies = iter(["I refuse to use markers", '{"summary": "fine {x}"}'])
    lm = fake_lm(lambda messages: next(replies))
    program = dspy.Predict(dspy.Signature("passage -> summary"))
    art = build_artifact(program, adapter=dspy.ChatAdapter())
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        prediction = program(passage="p")
    sent = []
    result = art.run(
        "self",
        lambda messages: sent.append(messages) or ["I refuse to use markers", '{"summary": "fine {x}"}'][len(sent) - 1],
        passage="p",
    )
    assert result == dict(prediction.items()) == {"summary": "fine {x}"}
    assert sent == lm.engine.requests


def test_optional_outputs_default_like_dspy() -> None:
    signature = dspy.Signature(
        {
            "q": (str, dspy.InputField()),
            "a": (str, dspy.OutputField()),
            "note": (str | None, dspy.OutputField()),
            "n": (int, dspy.OutputField(default=3)),
        }
    )
    _parity(dspy.ChatAdapter(), signature, ["[[ ## a ## ]]\nx", "[[ ## a ## ]]\nx\n[[ ## n ## ]]\n5"])
    _parity(dspy.JSONAdapter(), signature, ['{"a": "x"}', '{"a": "x", "note": null, "n": "7"}'])


# --- refusals ---------------------------------------------------------------------------------


class Custom(pydantic.BaseModel):
    value: int


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"history": (dspy.History, dspy.InputField())}, "input field 'history'.*History"),
        ({"image": (dspy.Image, dspy.InputField())}, "input field 'image'.*Image"),
        ({"out": (Custom, dspy.OutputField())}, "output field 'out'.*Custom"),
        ({"pair": (tuple[int, int], dspy.InputField())}, "input field 'pair'"),
    ],
)
def test_unrepresentable_fields_are_refused(fields: dict[str, Any], message: str) -> None:
    base = {"q": (str, dspy.InputField()), "a": (str, dspy.OutputField())}
    program = dspy.Predict(dspy.Signature({**base, **fields}))
    with pytest.raises(ExportError, match=f"predictor 'self': {message}"):
        build_artifact(program, adapter=dspy.ChatAdapter())


def test_other_adapters_are_refused() -> None:
    class MyChat(dspy.ChatAdapter):
        pass

    for adapter in (MyChat(), dspy.XMLAdapter(), dspy.TwoStepAdapter(dspy.LM("openai/gpt-4o-mini"))):
        with pytest.raises(ExportError, match="is not supported"):
            build_artifact(dspy.Predict("q -> a"), adapter=adapter)


def test_non_json_demos_decisions_and_placeholder_text_are_refused(tmp_path: Path) -> None:
    program = dspy.Predict("q -> a")
    program.demos = [dspy.Example(q={1, 2}, a="x")]
    with pytest.raises(ExportError, match="predictor 'self': demo 0 is not plain JSON"):
        build_artifact(program, adapter=dspy.ChatAdapter())

    program = dspy.Predict("q -> a")
    program.fields = {"a": {"criteria": "x"}}
    with pytest.raises(ExportError, match="predictor 'self' has decision-output settings"):
        build_artifact(program, adapter=dspy.ChatAdapter())

    for text in ("Mind the ⟦input:q⟧ marker.", "Mind the ⟦input:zzz⟧ marker."):
        program = dspy.Predict(dspy.Signature("q -> a", text))
        with pytest.raises(ExportError, match="predictor 'self'|placeholder"):
            export(program, tmp_path / "x.json", adapter=dspy.ChatAdapter())
        assert not (tmp_path / "x.json").exists()


def test_export_writes_metadata_and_lm_settings(tmp_path: Path) -> None:
    lm = dspy.LM("openai/gpt-4o-mini", temperature=0.3, max_tokens=50, api_key="sk-secret", api_base="http://x")
    art = export(
        dspy.Predict("q -> a"),
        tmp_path / "m.json",
        adapter=dspy.JSONAdapter(),
        lm=lm,
        metadata={"optimizer": "MIPROv2", "seed": 0, "dev_score": 71.5, "custom": {"k": [1]}},
    )
    text = (tmp_path / "m.json").read_text(encoding="utf-8")
    assert "sk-secret" not in text and "http://x" not in text
    assert art.lm == {"model": "openai/gpt-4o-mini", "model_type": "chat", "temperature": 0.3, "max_tokens": 50}
    meta = art.metadata
    assert meta["dspy_version"] == dspy.__version__
    assert (meta["optimizer"], meta["seed"], meta["dev_score"], meta["custom"]) == ("MIPROv2", 0, 71.5, {"k": [1]})
    assert meta["test_score"] is None and meta["created_at"].endswith("+00:00")
    assert json.loads(text)["content_hash"] == art.content_hash
    with pytest.raises(ExportError, match=r"metadata\['bad'\] is not plain JSON"):
        export(dspy.Predict("q -> a"), tmp_path / "n.json", adapter=dspy.JSONAdapter(), metadata={"bad": object()})
