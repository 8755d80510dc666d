"""The admission gate: form, quotes, code checks re-run in a fresh interpreter each, the
substance rule, the model judge.

`Verifier` (in `gate`) runs the stages in order; each stage lives in its own module beside
it: `form`, `empty_result`, `quotes`, `code_check` (its kernel side in `check_process`),
`substance`, `judge`; `verdict` holds what the gate answers. Values are compared by the one
rule in `delm_rlm.values`."""

from delm_rlm.verify.code_check import FLOAT_TOLERANCE, CheckRun, CheckRunner, answer_replay_check
from delm_rlm.verify.empty_result import empty_result_reason, named_labels
from delm_rlm.verify.gate import Verifier
from delm_rlm.verify.judge import neutralize, parse_judge_reply
from delm_rlm.verify.quotes import check_quote
from delm_rlm.verify.substance import unsupported
from delm_rlm.verify.verdict import Verdict, VerdictStatus, VerificationStats

__all__ = [
    "FLOAT_TOLERANCE",
    "CheckRun",
    "CheckRunner",
    "Verdict",
    "VerdictStatus",
    "VerificationStats",
    "Verifier",
    "answer_replay_check",
    "check_quote",
    "empty_result_reason",
    "named_labels",
    "neutralize",
    "parse_judge_reply",
    "unsupported",
]
