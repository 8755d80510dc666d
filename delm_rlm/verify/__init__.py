"""The admission gate: form, quotes, code checks re-run in a fresh sandbox, the model judge.

`Verifier` (in `gate`) runs the stages in order; each stage lives in its own module beside
it: `form`, `empty_result`, `agreement` (partials agree on schema and cover their chunk),
`quotes`, `code_check`, `judge`; `verdict` holds what the gate answers. `methods` admits and
applies shared methods (code that computes a chunk's partial, run without a model). Values
are compared by the one rule in `delm_rlm.values`."""

from delm_rlm.verify.agreement import AgreementRules, count_shape, disagreement, lacking_keys
from delm_rlm.verify.code_check import CheckRunner
from delm_rlm.verify.empty_result import empty_result_reason
from delm_rlm.verify.gate import Verifier
from delm_rlm.verify.judge import neutralize, parse_judge_reply
from delm_rlm.verify.methods import ChunkTarget, MethodGate, MethodValue
from delm_rlm.verify.quotes import check_quote
from delm_rlm.verify.verdict import Verdict, VerdictStatus, VerificationStats

__all__ = [
    "AgreementRules",
    "CheckRunner",
    "ChunkTarget",
    "MethodGate",
    "MethodValue",
    "Verdict",
    "VerdictStatus",
    "VerificationStats",
    "Verifier",
    "check_quote",
    "count_shape",
    "disagreement",
    "empty_result_reason",
    "lacking_keys",
    "neutralize",
    "parse_judge_reply",
]
