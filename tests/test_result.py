"""Result as people meet it: a short repr, a notebook card, JSON, one word for an unknown cost."""

from __future__ import annotations

import json

from delm_rlm.llm import Usage
from delm_rlm.result import Result, format_cost


def test_repr_is_one_short_line_and_the_card_escapes() -> None:
    result = Result(answer="Answer: " + "x" * 200, status="budget", error="budget exceeded: tokens <b>",
                    usage=Usage(calls=3, cached_calls=1, input_tokens=1200, output_tokens=80, cost_usd=None),
                    gist_ids=["g1", "g2"], store_path="runs/r1/store.sqlite", method="hybrid", seconds=2.5,
                    trace=[])
    text = repr(result)
    assert "\n" not in text and len(text) < 300 and text.startswith("Result(answer='Answer: xxx")
    assert "status='budget'" in text and "calls=3 (1 cached)" in text and "cost unknown" in text and "gists=['g1', 'g2']" in text
    card = result._repr_html_()
    assert "<b>" not in card and "tokens &lt;b&gt;" in card
    assert "3 calls (1 cached, 0 failed)" in card and "cost unknown" in card and "runs/r1" in card
    assert result.run_dir == "runs/r1"


def test_json_has_the_run_dir_and_leaves_the_trace_out() -> None:
    result = Result(answer="42", status="answered", trace_path="runs/r2/trace.jsonl")
    data = json.loads(result.to_json())
    assert data["answer"] == "42" and data["run_dir"] == "runs/r2" and "trace" not in data
    assert "trace" in json.loads(result.to_json(with_trace=True))
    assert format_cost(None) == "unknown" and format_cost(0.01234) == "$0.0123"
