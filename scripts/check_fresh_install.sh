#!/usr/bin/env bash
# A new user's first hour, replayed: clone HEAD into a temp folder and run the README's two commands
# there, exactly as the README writes them, with every cache empty (model cache, store, HF, pip, temp).
# Extra arguments are run afterwards as one more command in the same clone and caches (CI runs the
# slow tests that way). Exit status: non-zero as soon as a command fails.
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
root=$(mktemp -d "${TMPDIR:-/tmp}/sam-fresh.XXXXXX")
trap 'status=$?; [ "${KEEP_FRESH:-0}" = 1 ] || rm -rf "$root"; exit $status' EXIT
git clone -q "$repo" "$root/sam"
mkdir -p "$root/cache" "$root/home" "$root/hf" "$root/xdg" "$root/pip" "$root/tmp"
export SAM_MODEL_CACHE="$root/cache" SAM_HOME="$root/home" HF_HOME="$root/hf" XDG_CACHE_HOME="$root/xdg" \
       PIP_CACHE_DIR="$root/pip" TMPDIR="$root/tmp"
cd "$root/sam"
# The README's block under "## Two commands", comments stripped: one line sets up and runs the main
# job, the other runs the tests.
mapfile -t commands < <(awk '/^## Two commands/{f=1} f&&/^```bash/{b=1; next} b&&/^```/{exit} b' README.md | sed 's/[[:space:]]*#.*$//' | sed '/^[[:space:]]*$/d')
[ "${#commands[@]}" -eq 2 ] || { echo "README's 'Two commands' block has ${#commands[@]} commands, want 2" >&2; exit 1; }
for cmd in "${commands[@]}"; do
  echo "== $cmd"
  start=$SECONDS
  bash -c "$cmd"
  echo "== passed in $((SECONDS - start)) s: $cmd"
done
if [ $# -gt 0 ]; then
  echo "== $*"
  start=$SECONDS
  "$@"
  echo "== passed in $((SECONDS - start)) s: $*"
fi
