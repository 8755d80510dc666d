#!/usr/bin/env bash
# Issue 12, labelled windows, after the literal and cell-error hints: the same windows as
# run-issue12.sh (seed 12), rlm and hybrid measured in one run at one commit, fresh cache per
# method. Resumable: rerun to fill in what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/issue12-labelled-after.jsonl}
B="python -m evals.bench_methods --seed 12 --windows 3 --questions 1 --longbench 0 --variants labelled --methods rlm,hybrid --out $OUT"
$B --sizes 8192 --timeout 900
$B --sizes 32768 --timeout 900
$B --sizes 131072 --windows 2 --timeout 1200
