"""Dollar accounting on the meters: declared prices, the cost cap, unknown prices (fake engine)."""

from __future__ import annotations

import dspy
import pytest

from dspy_ext.lm import CallMeter, CostCapReached, Price, find_budget_exhausted, metering
from dspy_ext.lm.fake import FakeEngine


def _lm(price: Price | None) -> dspy.LM:
    engine = FakeEngine(lambda messages: "positive")
    engine.price = price
    return dspy.LM(f"fake/costs-{id(engine)}", engine=engine, cache=False)


def test_a_declared_price_is_charged_per_call_from_the_token_usage() -> None:
    meter = CallMeter()
    with metering(meter):
        _lm(Price(input_per_1m=2.0, output_per_1m=8.0))("hello there")
    usage = meter.snapshot()
    assert usage.usd == pytest.approx((usage.input_tokens * 2.0 + usage.output_tokens * 8.0) / 1e6)
    assert usage.usd > 0


def test_the_cost_cap_refuses_the_next_call_once_it_is_spent() -> None:
    meter = CallMeter(max_cost=1e-9)
    lm = _lm(Price(input_per_1m=1.0, output_per_1m=1.0))
    with metering(meter):
        lm("first")
        with pytest.raises(Exception) as caught:
            lm("second")
    assert isinstance(find_budget_exhausted(caught.value), CostCapReached)
    assert meter.snapshot().calls == 1


def test_an_engine_without_a_price_makes_the_total_unknown_not_zero() -> None:
    meter = CallMeter()
    with metering(meter):
        _lm(None)("hello")
    assert meter.snapshot().usd is None
    assert meter.snapshot().unpriced_calls == 1


def test_a_price_must_be_a_non_negative_number() -> None:
    with pytest.raises(ValueError, match="input_per_1m"):
        Price(input_per_1m=-1.0, output_per_1m=0.0)
