"""Dollar budgets for any model: a price per LM, from `DELM_RLM_PRICE`, or from the command
line's "IN,OUT"; and a dollar budget whose price is unknown refused when the LM or the
session is made, before any call (ScriptedLM and LM construction, no network)."""

from __future__ import annotations

import pytest

from delm_rlm.errors import BudgetExceeded, ConfigError, LMError, PriceUnknown
from delm_rlm.llm.gateway import LM
from delm_rlm.llm.prices import PRICE_ENV, Price, parse_price, price_from_env
from delm_rlm.llm.scripted import ScriptedLM
from delm_rlm.llm.usage import Budget

NOWHERE = "http://127.0.0.1:9/v1"  # never called: these tests make no request


@pytest.fixture(autouse=True)
def no_price_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PRICE_ENV, raising=False)


def test_a_price_is_parsed_from_in_comma_out() -> None:
    assert parse_price("0.15,0.60") == Price(input_per_mtok=0.15, output_per_mtok=0.60)
    assert parse_price(" 3 , 15 ") == Price(input_per_mtok=3.0, output_per_mtok=15.0)
    assert parse_price("0,0") == Price(input_per_mtok=0, output_per_mtok=0)
    for bad in ("1", "1,2,3", "a,b", "-1,2", "1,-2", "inf,1", "nan,1", "", ",", "1;2"):
        with pytest.raises(ConfigError, match=r"--price .* is not a price: write IN,OUT in US dollars per million"):
            parse_price(bad, source="--price")


def test_the_environment_prices_the_lms_own_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PRICE_ENV, "2,8")
    assert price_from_env() == Price(input_per_mtok=2, output_per_mtok=8)
    assert LM("house-model", base_url=NOWHERE).price() == Price(input_per_mtok=2, output_per_mtok=8)
    # An explicit per-LM price wins; the local model stays free.
    assert LM("house-model", base_url=NOWHERE, prices={"house-model": (1, 1)}).price() == Price(input_per_mtok=1, output_per_mtok=1)
    assert LM("local").price() == Price(input_per_mtok=0, output_per_mtok=0)
    monkeypatch.setenv(PRICE_ENV, "cheap")
    with pytest.raises(ConfigError, match=rf"{PRICE_ENV} 'cheap' is not a price"):
        LM("house-model", base_url=NOWHERE)


async def test_a_dollar_budget_is_enforced_for_a_model_priced_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PRICE_ENV, "100000,0")  # $0.10 per input token
    lm = ScriptedLM(lambda m, r: "ok", model="my-vllm-model", budget=Budget(max_usd=2.0))
    with pytest.raises(BudgetExceeded) as info:
        for _ in range(50):
            await lm.complete("hello there")
    assert info.value.limit == "usd"
    assert 0 < lm.usage.total.calls < 50 and lm.usage.total.cost_usd is not None


def test_an_unknown_price_with_a_dollar_budget_is_refused_when_the_lm_is_made() -> None:
    with pytest.raises(PriceUnknown, match=r"max_usd=1\): the price of model 'mystery-model' is unknown") as info:
        LM("mystery-model", base_url=NOWHERE, budget=Budget(max_usd=1.0))
    message = str(info.value)
    assert "prices={'mystery-model'" in message and PRICE_ENV in message and "--price IN,OUT" in message
    assert isinstance(info.value, LMError) and isinstance(info.value, ConfigError)
    # A route to a model without a price is refused too, naming it.
    with pytest.raises(PriceUnknown, match=r"'tiny-model' is unknown"):
        LM("gpt-4o-mini", base_url=NOWHERE, routes={"sub": "tiny-model"}, budget=Budget(max_usd=1.0))
    # Priced, or no dollar limit: fine.
    LM("mystery-model", base_url=NOWHERE, prices={"mystery-model": (1, 2)}, budget=Budget(max_usd=1.0))
    LM("mystery-model", base_url=NOWHERE, budget=Budget(max_tokens=1000, max_seconds=5))


def test_an_unknown_price_with_a_dollar_budget_is_refused_when_a_session_is_opened() -> None:
    lm = ScriptedLM(lambda m, r: "ok", model="unpriced-scripted")
    with pytest.raises(PriceUnknown, match="'unpriced-scripted' is unknown"):
        lm.session(Budget(max_usd=0.5))
    with pytest.raises(PriceUnknown):
        lm.check_budget(Budget(max_usd=0.5))
    lm.check_budget(Budget(max_calls=3))
    lm.check_budget(None)
    assert lm.session(Budget(max_calls=3)).budget.max_calls == 3
    priced = ScriptedLM(lambda m, r: "ok", model="unpriced-scripted", prices={"unpriced-scripted": (1.0, 1.0)})
    assert priced.session(Budget(max_usd=0.5)).budget.max_usd == 0.5
    assert priced.models_and_prices() == {"unpriced-scripted": Price(input_per_mtok=1.0, output_per_mtok=1.0)}
