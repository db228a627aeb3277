#!/usr/bin/env bash
# Throughput benchmarks, one process per backend (frameworks never share a process).
# Usage: bash benchmarks/run.sh [OUT_DIR]   (default results/benchmarks/<date>-cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-results/benchmarks/$(date +%Y-%m-%d)-cpu}"
mkdir -p "$out"
for backend in torch jax tensorflow; do
  BENCH_BACKENDS=$backend python -m pytest benchmarks -p no:cacheprovider --benchmark-only \
    --benchmark-columns=median,iqr,rounds --benchmark-json "$out/$backend.json" -q
done
python benchmarks/summarize.py "$out"
