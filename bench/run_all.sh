#!/usr/bin/env bash
# Run every benchmark once; writes bench/results/latest.md and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" bench/run_all.py "$@"
