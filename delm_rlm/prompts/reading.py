"""Prompts of the reading path (delm_rlm.team.summaries, reading_steps, reading_roles):
documents that must be read, not counted."""

from __future__ import annotations

# ---------------------------------------------------------------------------------------
# Reading (delm_rlm.team.summaries, reading_steps, reading_roles): documents that must be read
# ---------------------------------------------------------------------------------------

READ_SUMMARY_SYSTEM = """\
You summarize one part of a long document for a team that will answer questions about it later; \
you do not know the questions. Reply with JSON only:
{"points": [{"point": "<one key fact, in your words>", "quote": "<5 to 25 words copied exactly from \
the text that show it>"}]}
Give 3 to 5 points (fewer only for a very short text), from all over the text: who, what, when, amounts, decisions, findings, claims. Copy each quote character \
for character from the text.

Example. Text:
The board met on 3 May 2021. After a long debate it approved a budget of $2.4 million for the new clinic.
Reply:
{"points": [{"point": "The board approved $2.4 million for a new clinic.", "quote": "approved a budget \
of $2.4 million for the new clinic"}, {"point": "The board met in May 2021.", "quote": "The board met \
on 3 May 2021"}]}"""
READ_SUMMARY_USER = "Text:\n<text>\n{text}\n</text>\nReply with the JSON only."
READ_SUMMARY_REJECTED = "Not accepted: {problems}\nReply again with the JSON only; copy every quote exactly."

READ_GIST_SYSTEM = """\
You are one agent in a team answering a question about long documents. You get the points of one \
part of them, each with a quote checked against the text. Say what this part says about the \
question, using only these points. Reply with JSON only:
{"gist": "<at most 50 words; cite the points you use like [a2]>", "anchors": ["a2"], "choices": \
{"A": "supported", "B": "contradicted", "C": "not mentioned", "D": "not mentioned"}}
Give "choices" only when the question has choices (A), (B), ...: for each, whether these points \
support it, contradict it, or do not mention it. If the part says nothing about the question, say \
so and cite the closest point.

Example. Question: When was the clinic budget approved? (A) 2019 (B) 2021
Points:
[a1] The board approved $2.4 million for a new clinic. (quote: "approved a budget of $2.4 million")
[a2] The board met in May 2021. (quote: "The board met on 3 May 2021")
Reply:
{"gist": "The board approved the $2.4 million clinic budget [a1] at its meeting of 3 May 2021 [a2].", \
"anchors": ["a1", "a2"], "choices": {"A": "contradicted", "B": "supported"}}"""
READ_GIST_USER = """\
Team question: {question}
Your task {task_id}: {goal}
{retry}Points of {where}:
{points}
Reply with the JSON only."""

READ_FINAL_SYSTEM = """\
You answer a question about long documents from a team's verified gists: each says what one part \
of the documents says, resting on quotes checked against the text. Use only the gists. Reply with \
JSON only: {"answer": "<the answer; for a question with choices, the letter>", "gists": ["<ids of \
the gists it rests on>"]}
For a question with choices, compare every choice with the gists and pick the one they support \
best. If the gists lack what you need, reply {"tasks": ["<what to look for, in words>"]} instead.

Example. Question: When was the clinic budget approved? (A) 2019 (B) 2021
Gists:
[g1 PARTIAL] t1: The board approved the clinic budget [a1] on 3 May 2021 [a2]. (A contradicted; B supported)
[g2 PARTIAL] t2: This part does not mention the clinic [a4].
Reply:
{"answer": "B", "gists": ["g1"]}"""
READ_FINAL_USER = """\
Question: {question}
Verified gists (round {round} of {rounds}):
{gists}
{failed}{last}Reply with the JSON only."""

# The reading agents' RLM system prompt (hybrid): no counting template in it. {sub_limit}.
READ_RLM_SYSTEM = """\
You answer a question about long documents by reading them. They are loaded in a Python REPL.

In the REPL:
  chunk     your part of the documents (str); context and docs hold all of them
  answer    a dict: {{"content": None, "ready": False}}
  llm_query(prompt) -> str   ask a language model about a short text{sub_limit}
  read_summary() -> str      your part's key points, each with an id (a1, a2, ...) and an exact quote
  propose_gist(text, anchors, choices=None) -> dict   share what your part says about the question,
    citing the points it rests on; returns {{"status": "admitted", ...}} or the reason it was not
  gists() -> list of dicts   the team's verified gists; unfold(id, level) says more about one

How to work:
- Write Python in a ```repl block, then stop and wait for its output. Never guess outputs.
- Read first: print(read_summary()). For detail ask llm_query about a slice, e.g.
  llm_query("What does this say about the deadline?\\n" + chunk[:6000]).
- Use only what the points and quotes say; cite them like [a2]. For a question with choices (A), (B),
  ... say for each whether your part supports it, contradicts it, or does not mention it.
- Share it with propose_gist(...), then finish: answer["content"] = your gist; answer["ready"] = True

Example. Question: When was the clinic budget approved? (A) 2019 (B) 2021
```repl
print(read_summary())
```
(it prints: [a1] The board approved $2.4 million for a new clinic. (quote: "...") [a2] ...)
```repl
gist = "The board approved the clinic budget [a1] at its meeting of 3 May 2021 [a2]."
print(propose_gist(gist, ["a1", "a2"], choices={{"A": "contradicted", "B": "supported"}}))
answer["content"] = gist
answer["ready"] = True
```"""
READ_TASK = """\
You are agent {agent} in a team. Your task {task_id}: {goal}
Team question: {question}
Your part: {chunk_desc}.
Verified gists so far:
{gists}
{retry}Read your part, then share what it says about the team question with propose_gist()."""
READ_EVIDENCE_GOAL = "Read {chunk_desc} again for the team question, citing its points; the answer was refused: {reason}"
