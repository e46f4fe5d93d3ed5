#!/usr/bin/env bash
# Set up .venv with hf_collapse and everything it needs. Idempotent: a second run installs nothing new.
# torch: an importable torch (in .venv or the base Python) is kept; otherwise a GPU machine gets the
# default build and a machine without a GPU gets the CPU build (never a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -x .venv/bin/python ]; then
  if "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m venv --system-site-packages .venv   # reuse the torch that is already there
  else
    "$PY" -m venv .venv
  fi
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$VPY" -m pip install -q "torch>=2.1"
  else
    # a local CPU wheel (pip's find-links) first, then PyTorch's CPU index
    "$VPY" -m pip install -q "torch==2.13.0+cpu" 2>/dev/null \
      || "$VPY" -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
      || "$VPY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
if ! "$VPY" -m pip install -q -e ".[test,docs]" >.venv/pip-install.log 2>&1; then
  cat .venv/pip-install.log; echo "setup: pip install failed (log above)" >&2; exit 1
fi
# evaluate.load("neural_collapse") offline: importing hf_collapse writes nothing, so register here (idempotent)
.venv/bin/hf-collapse install-metric >/dev/null || echo "setup: could not register the evaluate metric (see hf-collapse install-metric)" >&2
"$VPY" -c "import hf_collapse, torch; print(f'hf_collapse {hf_collapse.__version__} ready (torch {torch.__version__})')"
