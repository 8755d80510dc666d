"""The cost preview: tasks from the team's own split, tokens as an estimate that says how it
was made, dollars from the model's price or "unknown", and the confirmation threshold."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from delm_rlm import preview as preview_mod
from delm_rlm.corpus import Corpus
from delm_rlm.llm import Budget, ScriptedLM
from delm_rlm.preview import preview_cost
from test_chunking import log_csv


def test_a_300_row_csv_previews_as_a_few_tasks_with_tokens_and_dollars(tmp_path: Path) -> None:
    corpus = Corpus.from_paths([log_csv(tmp_path / "logs.csv")])
    lm = ScriptedLM([], model="gpt-4o-mini")  # a model with a list price
    p = preview_cost("hybrid", lm, corpus, agents=2, budget=Budget(max_usd=0.5))
    assert 2 <= p.tasks <= 4  # one to three chunks, then the finalizer
    assert p.corpus_tokens == lm.count_tokens(corpus.text)
    assert p.input_tokens == p.corpus_tokens + p.prompt_tokens_per_task * p.tasks
    price = lm.price("gpt-4o-mini")
    assert p.usd is not None and abs(p.usd - price.cost(p.input_tokens, p.output_tokens)) < 1e-12
    text = "\n".join(p.lines())
    assert "plan: hybrid team of 2 agents" in text and "then a finalizer" in text and "rows 0-" in text
    assert f"input tokens (estimate): ~{p.input_tokens:,} = corpus {p.corpus_tokens:,}" in text
    assert "cost (estimate): $" in text and "budget: usd 0.5" in text
    assert p.needs_confirmation() is None


def test_unknown_price_is_unknown_and_the_threshold_names_what_is_over() -> None:
    corpus = Corpus(pd.DataFrame({"x": range(50)}))
    lm = ScriptedLM([], model="mystery-model")
    p = preview_cost("rlm", lm, corpus)
    assert p.usd is None and p.tasks == 1
    assert "cost (estimate): unknown (the model has no price: pass --price IN,OUT" in "\n".join(p.lines())
    assert p.needs_confirmation(max_tokens=10) is not None and "input tokens (over 10)" in p.needs_confirmation(max_tokens=10)
    priced = preview_cost("direct", ScriptedLM([], model="gpt-4o"), Corpus("word " * 1000))
    assert priced.tasks == 1 and priced.plan[0].startswith("direct: one model call")
    assert "over $0.00" in (priced.needs_confirmation(max_usd=0.0) or "")
    assert preview_mod.CONFIRM_TOKENS > 100_000 and preview_mod.CONFIRM_USD > 0
