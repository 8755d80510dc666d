"""Prompts of the baselines delm-rlm is compared with (delm_rlm.methods): direct and the
central orchestrator."""

from __future__ import annotations

# ---------------------------------------------------------------------------------------
# The baselines delm-rlm is compared with (delm_rlm.methods)
# ---------------------------------------------------------------------------------------

# `direct`: one call, the (middle-truncated) context followed by the question. LongBench-v2
# uses its official template instead (tasks.longbench.direct_prompt).
DIRECT_PROMPT = "{context}\n\n{question}"

# `orchestrator`: a central manager splits the text, one worker reports on each part, the
# manager reads every report. These prompts are part of the method being compared.
ORCHESTRATOR_WORKER = """\
You are a worker. A manager split a long text into {total} parts and gave you part {index}. \
Other workers read the other parts; the manager will combine all the reports.

Part {index} of {total}:
<part>
{chunk}
</part>

Question about the whole text: {question}

Report what part {index} contains that helps answer the question: the relevant facts and \
short quotes, and exact counts for this part only where the question needs counting. Do not \
guess about the other parts. Be brief."""

ORCHESTRATOR_MERGE = """\
You are the manager. You split a long text into {total} parts; each worker read one part \
and reported on the question. Here are all {total} reports.

{reports}

Question: {question}

Combine the reports into one answer to the question about the whole text (for totals, add \
up the parts' counts). Give your final answer in exactly the form the question asks for."""

ORCHESTRATOR_REPORT = "Report on part {index} of {total}:\n{text}"
