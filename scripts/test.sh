#!/usr/bin/env bash
# Set up (idempotent), lint, type-check and run the whole test suite (starts its own redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check bot tests bench
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
