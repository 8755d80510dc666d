"""End-to-end smoke test of the RLM agent with the real offline local model.

Real llama.cpp server, real kernel, real bridge. It asserts that a run reaches a parsed
answer; whether the answer is right belongs in the benchmark (evals/), not here.
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import pytest

from tasks.pool import TREC_LABELS

pytestmark = pytest.mark.local_model

# The same place conftest.py reads real data from (DELM_RLM_SHARED_DATA, else ../shared/data).
TREC = Path(os.environ.get("DELM_RLM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "trec" / "train_5500.label"
# OOLONG's names for the TREC coarse labels, in the pool's code order.
LABELS = TREC_LABELS


def oolong_window(n: int, seed: int) -> tuple[str, Counter[str]]:
    """A labelled OOLONG-style window of `n` instance lines from the TREC pool."""
    rng = random.Random(seed)
    pool = []
    for raw in TREC.read_text(encoding="latin-1").splitlines():
        tag, _, question = raw.partition(" ")
        pool.append((question.strip(), LABELS[tag.split(":")[0]]))
    first, span = date(2022, 2, 16), (date(2025, 6, 21) - date(2022, 2, 16)).days
    users = [rng.randint(10000, 99999) for _ in range(40)]
    lines, counts = [], Counter()
    for question, label in rng.sample(pool, n):
        day = first + timedelta(days=rng.randint(0, span))
        lines.append(
            f"Date: {day.strftime('%b %d, %Y')} || User: {rng.choice(users)} || "
            f"Instance: {question} || Label: {label}"
        )
        counts[label] += 1
    names = ", ".join(f"'{v}'" for v in LABELS.values())
    intro = (
        f"The following lines contain {n} general-knowledge questions, one per line. Each question "
        f"has an answer that can be described as one of 6 categories: {names}."
    )
    return "\n".join([intro, "", *lines]), counts


@pytest.fixture(scope="module")
def local_lm():
    pytest.importorskip("llama_cpp", reason="the `local` extra is not installed: pip install 'delm-rlm[local]'")
    from delm_rlm.llm import local as local_model
    from delm_rlm.llm.gateway import LM

    try:
        local_model.ensure_model_file()
    except local_model.LocalModelUnavailable as exc:
        pytest.skip(f"the offline local model is not available: {exc}")
    # No response cache: the point is to go through the real server every time.
    return LM("local", cache=False)


@pytest.mark.timeout(600)
async def test_rlm_counts_labels_with_the_local_model(local_lm, record_property) -> None:
    from delm_rlm.rlm import RLM

    assert TREC.exists(), f"missing the TREC pool at {TREC}"
    context, counts = oolong_window(2000, seed=7)
    label = "location"
    question = f"How many lines have the label '{label}'? Answer with a single number."

    result = await RLM(local_lm, max_iterations=4).run(question, context)

    numbers = re.findall(r"-?\d+", result.answer or "")
    record_property("answer", result.answer)
    record_property("gold", counts[label])
    record_property("seconds", result.seconds)
    record_property("finished_by", result.finished_by)
    print(f"\nlocal RLM: answer={result.answer!r} gold={counts[label]} status={result.status} "
          f"finished_by={result.finished_by} iterations={result.iterations} seconds={result.seconds} "
          f"tokens in/out={result.usage.input_tokens}/{result.usage.output_tokens}")
    assert result.status == "answered", result.error
    assert result.answer and len(numbers) == 1, f"no single number in {result.answer!r}"
    assert any(e.kind == "code_cell" for e in result.trace), "the model never ran code"
