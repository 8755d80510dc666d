#!/usr/bin/env bash
# The issue-12 benchmark (see README "Methods compared"): resumable; rerun to fill in what is missing.
# Most informative rows first: rlm and hybrid at every size, then the costlier baselines.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/issue12.jsonl}
B="python -m evals.bench_methods --seed 12 --windows 3 --questions 1 --longbench 0 --out $OUT"
$B --sizes 8192   --methods rlm,hybrid --timeout 1200
$B --sizes 131072 --windows 2 --variants labelled --methods rlm,hybrid --timeout 1500
$B --sizes 32768  --methods rlm,hybrid --timeout 1500
$B --sizes 8192   --methods orchestrator,delm,direct --timeout 1200
$B --sizes 32768  --methods orchestrator,delm --timeout 1500
