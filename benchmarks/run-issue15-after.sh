#!/usr/bin/env bash
# The issue-15 rerun after selective reading (read_slices, default 1): the three shortest
# LongBench-v2 Multi-Doc dev items, local model, fresh cache per method, rlm as the baseline
# measured in the same run. Resumable: rerun to fill in what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m evals.bench_methods --sizes "" --longbench 3 --methods rlm,hybrid,delm --timeout 900 \
    --out benchmarks/issue15-after.jsonl
