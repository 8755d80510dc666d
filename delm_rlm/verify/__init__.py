"""The admission gate: form, quotes, code checks re-run in a fresh sandbox, the model judge.

`Verifier` (in `gate`) runs the stages in order; each stage lives in its own module beside
it: `form`, `empty_result`, `quotes`, `support` (reading gists rest on their cited anchors),
`code_check`, `judge`; `verdict` holds what the gate answers; `fuzzy` maps near-copy quotes
to the span they copy. Values are compared by the one rule in `delm_rlm.values`."""

from delm_rlm.verify.code_check import CheckRunner
from delm_rlm.verify.empty_result import empty_result_reason, named_labels
from delm_rlm.verify.gate import Verifier
from delm_rlm.verify.judge import neutralize, parse_judge_reply
from delm_rlm.verify.quotes import check_quote
from delm_rlm.verify.verdict import Verdict, VerdictStatus, VerificationStats

__all__ = [
    "CheckRunner",
    "Verdict",
    "VerdictStatus",
    "VerificationStats",
    "Verifier",
    "check_quote",
    "empty_result_reason",
    "named_labels",
    "neutralize",
    "parse_judge_reply",
]
