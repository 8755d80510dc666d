"""Scripted models for CLI and report tests (selected through the model name
DELM_RLM_MODEL=scripted:scripted_models:NAME).

Each is a function (messages, role) -> reply. They test the framework's mechanics (the REPL
loop, the bridge, traces, exit codes), never a model's intelligence: the code they write is
what a competent model would write, and the kernel, not the script, computes every number.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

from delm_rlm.errors import LMError


def _text(messages: list[dict]) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages)


def _question(messages: list[dict]) -> str:
    """The question of the first user message (RLM: 'Question: ...'; team prompts alike)."""
    text = _text(messages)
    found = re.findall(r"Question:\s*(.+)", text)
    return found[-1].strip() if found else text[-500:]


def _needle(question: str) -> str:
    """The word a counting question asks about: "... mention 'X' ..." or "... label 'X' ..."."""
    m = re.search(r"(?:mention|label)\s+'([^']+)'", question)
    if not m:
        raise ValueError(f"scripted model: no quoted word in question {question!r}")
    return m.group(1)


def count_mentions(messages: list[dict], role: str) -> str:
    """An RLM agent: first turn looks at the data, second counts in code and finishes by state.

    Works for any agent prompt that ends with the REPL's output; a sub-call (llm_query) gets a
    plain one-line reply.
    """
    if role == "sub":
        return "yes"
    text = _text(messages)
    question = _question(messages)
    if "REPL output" not in text:
        return "Let me look at the data first.\n```repl\nprint(type(context).__name__, len(context))\nprint(context[:80])\n```"
    needle = _needle(question).lower()
    # OOLONG-style labelled windows: a label is the text after '|| Label: ' on its line.
    if "label '" in question:
        cond = f"line.rstrip().endswith('|| Label: {needle}')"
    else:
        cond = f"{needle!r} in line.lower()"
    return (
        "Now count in code.\n```repl\n"
        f"n = sum(1 for line in context.splitlines() if {cond})\n"
        "print(n)\n"
        "answer['content'] = f'Answer: {n}'\n"
        "answer['ready'] = True\n```"
    )


def team_counter(messages: list[dict], role: str) -> str:
    """A hybrid team member: per task, count the needle in its chunk with code and propose the
    count with a check; as finalizer, sum the verified partial values in code. On a whole
    plan (one task over the whole corpus, RLM's prompts), count over `context` and answer.

    Its first proposal for task t2 is off by one (a real check then prints the true count), so
    a run shows a rejection, the FAILURE record and the retry that succeeds.
    """
    text = _text(messages)
    if role == "verifier":
        return "ADMIT: the quoted text supports the claim"
    if role == "sub":
        return "yes"
    team_q = re.search(r"Team question:\s*(.+)", text)
    question = team_q.group(1).strip() if team_q else _question(messages)
    needle = _needle(question)
    if "label '" in question:
        cond = f"line.rstrip().endswith('|| Label: {needle}')"
    else:
        cond = f"{needle.lower()!r} in line.lower()"
    if "All team tasks are finished" in text:
        return (
            "Sum the verified partial counts.\n```repl\n"
            "parts = gists(kind='partial')\n"
            "total = sum(int(g['value']) for g in parts)\n"
            "print([g['id'] for g in parts], total)\n"
            "answer['content'] = f'Answer: {total}'\n"
            "answer['ready'] = True\n```"
        )
    if "Your task" not in text:  # the whole plan: one program over the whole corpus
        return (
            "Count in the whole corpus.\n```repl\n"
            f"n = sum(1 for line in context.splitlines() if {cond})\n"
            "answer['content'] = f'Answer: {n}'\n"
            "answer['ready'] = True\n```"
        )
    task = re.search(r"Your task (t\d+)", text)
    task_id = task.group(1) if task else "t?"
    first_try_of_t2 = task_id == "t2" and "previous attempt at this task was rejected" not in text
    claim = "n + 1" if first_try_of_t2 else "n"
    return (
        f"Count in my chunk and share it.\n```repl\n"
        f"n = sum(1 for line in chunk.splitlines() if {cond})\n"
        f"check = \"print(sum(1 for line in chunk.splitlines() if {cond}))\"\n"
        f"print(propose('partial', f'{{{claim}}} matching lines in {task_id}', value={claim}, check=check))\n"
        f"answer['content'] = str({claim})\n"
        "answer['ready'] = True\n```"
    )


def direct_count(messages: list[dict], role: str) -> str:
    """A `direct` model: the context is in the prompt; count the needle's lines in it."""
    body, _, question = _text(messages).rpartition("\n\n")  # the prompt: context, blank line, question
    needle = _needle(question).lower()
    n = sum(1 for line in body.splitlines() if needle in line.lower())
    return f"Answer: {n}"


def unreachable(messages: list[dict], role: str) -> str:
    """An endpoint that is down: every call fails for good."""
    raise LMError("cannot reach the model endpoint at http://127.0.0.1:9/v1: check OPENAI_BASE_URL")


def chatty(messages: list[dict], role: str) -> str:
    """Never finishes: long replies without code, to run into a token budget."""
    return "Thinking about it at length. " * 200


# ---- a real run to report on ---------------------------------------------------------------------

FRUIT_DOCS = [
    "apple pie\nbanana bread\napple tart",
    "cherry jam\nApple juice <b>fresh</b> & </script><script>alert('x')</script>",
]
FRUIT_QUESTION = "How many lines mention 'apple'?"


async def build_run(run_dir):  # type: ignore[no-untyped-def]
    """A small real team run to report on: two agents (ScriptedLM `team_counter`, real kernels),
    the real verifier (its own kernel), the real store and queue. Task t2's first proposal is
    false, so the run holds an admission, a rejection with its FAILURE record, a retry and a
    finalize. The corpus holds markup, to prove the report escapes what runs contain.
    Returns the Result; the run's files are in `run_dir`.
    """
    from delm_rlm.llm.scripted import ScriptedLM
    from delm_rlm.team import Team

    team = Team(ScriptedLM(team_counter), agents=2, plan="split", run_dir=run_dir, judge=False)
    return await team.run(FRUIT_QUESTION, FRUIT_DOCS)


def counts_finalizer(answer_expr: str) -> str:
    """A finalizer reply adding up per-label count partials and answering with
    `answer_expr` (an f-string body over `total`, e.g. "Answer: {total['spam']}")."""
    return (
        "```repl\n"
        "from collections import Counter\n"
        "total = Counter()\n"
        'for g in gists(kind="partial"):\n'
        '    total.update(g["value"])\n'
        f'answer["content"] = f"{answer_expr}"\n'
        'answer["ready"] = True\n'
        "```"
    )


async def worker_counter(messages: list[dict], role: str) -> str:
    """`team_counter` for several processes on one run (tests/test_workers.py), steered by
    the environment: with DELM_TEST_STALL_MARK=PATH the process writes the id of its first
    task to PATH and then hangs (blocking, so its leases are not renewed) until the test kills
    it; with DELM_TEST_WAIT_FOR=PATH it waits (without blocking) for PATH to exist before its
    first answer to a task, so the stalling process surely claims a task first."""
    text = _text(messages)
    task = re.search(r"Your task (t\d+)", text)
    if task and role not in ("verifier", "sub"):
        stall = os.environ.get("DELM_TEST_STALL_MARK")
        gate = os.environ.get("DELM_TEST_WAIT_FOR")
        if stall:
            Path(stall).write_text(task.group(1))
            time.sleep(600)  # the whole process hangs mid-task, as a machine that froze
        if gate:
            deadline = time.monotonic() + 60
            while not Path(gate).exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
    return team_counter(messages, role)
