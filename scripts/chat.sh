#!/usr/bin/env bash
# Set up (idempotent) and chat in the terminal with the default persona: embedded Redis, bundled model.
# Extra arguments go to `python -m bot chat` (e.g. --persona captain).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m bot chat "$@"
