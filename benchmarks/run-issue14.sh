#!/usr/bin/env bash
# The issue-14 benchmark (README "Model-given labels"): unlabelled trec_coarse windows, local
# model, fresh cache per method. Hybrid with its label checks (spot checks, shared rules: the
# defaults) and rlm in one file; hybrid without them in another (rows are keyed by task and
# method). Resumable: rerun to fill in what is missing. SIZES=8192,32768 for the full issue.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-8192}
B="python -m evals.bench_methods --seed 12 --windows 3 --questions 1 --longbench 0 --variants unlabelled --sizes $SIZES --timeout 1200"
$B --methods hybrid,rlm --out benchmarks/issue14-checks.jsonl
$B --methods hybrid --team spot_check_sample=0 --team max_label_rules=0 --out benchmarks/issue14-nochecks.jsonl
