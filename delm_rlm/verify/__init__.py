"""The admission gate: form, quotes, code checks re-run in a fresh interpreter each, the
substance rule, the model judge.

`Verifier` (in `gate`) runs the stages in order; each stage lives in its own module beside
it: `form`, `empty_result`, `agreement` (partials agree on schema and cover their chunk),
`quotes`, `support` (reading gists rest on their cited anchors), `code_check` (its kernel
side in `check_process`), `spot_check` (labels), `substance`, `judge`, `conflicts`;
`label_rules` holds the shared labelling rules; `verdict` holds what the gate answers;
`fuzzy` maps near-copy quotes to the span they copy; `methods` admits and applies shared
methods (code that computes a chunk's partial, run without a model). Values are compared by
the one rule in `delm_rlm.values`."""

from delm_rlm.verify.agreement import AgreementRules, count_shape, disagreement, lacking_keys
from delm_rlm.verify.code_check import FLOAT_TOLERANCE, CheckRun, CheckRunner, answer_replay_check
from delm_rlm.verify.conflicts import ConflictResolver, about_the_same, claim_subject
from delm_rlm.verify.empty_result import empty_result_reason
from delm_rlm.verify.gate import Verifier
from delm_rlm.verify.judge import neutralize, parse_judge_reply
from delm_rlm.verify.label_rules import label_rules, rule_gist
from delm_rlm.verify.methods import ChunkTarget, MethodGate, MethodValue
from delm_rlm.verify.quotes import check_quote
from delm_rlm.verify.spot_check import DEFAULT_SPOT_CHECK_SAMPLE, ReplayWatcher, SpotChecker
from delm_rlm.verify.substance import unsupported
from delm_rlm.verify.verdict import (
    ConflictOutcome,
    LabelDispute,
    SpotCheckReport,
    Verdict,
    VerdictStatus,
    VerificationStats,
)

__all__ = [
    "FLOAT_TOLERANCE",
    "AgreementRules",
    "CheckRun",
    "CheckRunner",
    "ChunkTarget",
    "ConflictOutcome",
    "ConflictResolver",
    "DEFAULT_SPOT_CHECK_SAMPLE",
    "LabelDispute",
    "MethodGate",
    "MethodValue",
    "ReplayWatcher",
    "SpotCheckReport",
    "SpotChecker",
    "Verdict",
    "VerdictStatus",
    "VerificationStats",
    "Verifier",
    "about_the_same",
    "answer_replay_check",
    "check_quote",
    "claim_subject",
    "count_shape",
    "disagreement",
    "empty_result_reason",
    "label_rules",
    "lacking_keys",
    "neutralize",
    "parse_judge_reply",
    "rule_gist",
    "unsupported",
]
