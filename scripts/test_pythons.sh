#!/usr/bin/env bash
# Run the whole test suite under other Pythons, each from a fresh clone of
# this repository's HEAD (committed work only) with a venv of its own, as a
# new user on that Python would: `make test` with PYTHON set.
#
# Usage: bash scripts/test_pythons.sh [VERSION|INTERPRETER ...]
#   (default: 3.12 3.13). A VERSION is found as pythonVERSION on PATH or,
#   failing that, in pyenv's versions; an INTERPRETER is a path.
#   WORKDIR=DIR keeps the clones there (default: a new temporary folder);
#   a clone already there is reused, its venv updated by the setup stamp.
# Each version's log is DIR/VERSION.log; the last lines printed are one
# summary line per version, and the exit status is 1 if any run failed.
# First run per version: setup (about 2 minutes, 6 GB; numpy builds from
# source on 3.13, about 9 minutes more) plus the suite (about 8 minutes).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
versions=("$@")
[[ ${#versions[@]} -gt 0 ]] || versions=(3.12 3.13)
work=${WORKDIR:-$(mktemp -d -t lava-spiked-pythons.XXXX)}
mkdir -p "$work"
summary=()
status=0
# the interpreter for a version or path, or nothing
interpreter() {
  local py
  for py in "$1" "python$1" "$(pyenv root 2>/dev/null)"/versions/"$1"*/bin/python"$1"; do
    if [[ $py == */* || $py == python* ]] && "$py" -c 'import sys' 2>/dev/null; then
      command -v "$py"; return
    fi
  done
}
for arg in "${versions[@]}"; do
  py=$(interpreter "$arg")
  if [[ -z $py ]]; then
    summary+=("Python $arg: no interpreter found")
    status=1
    continue
  fi
  v=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  log=$work/$v.log
  clone=$work/py$v
  if [[ ! -d $clone/.git ]]; then
    git clone -q "$repo" "$clone"
  else
    git -C "$clone" pull -q --ff-only
  fi
  echo "== Python $v ($("$py" -V 2>&1)), commit $(git -C "$clone" rev-parse --short HEAD), log $log"
  start=$SECONDS
  (cd "$clone" && PYTHON=$py make test) >"$log" 2>&1
  rc=$?
  # pytest's closing line, e.g. "=== 291 passed, 2 warnings in 480.1s ==="
  last=$(grep -E "^=+ .*(passed|failed|error).* in [0-9.]+s" "$log" | tail -1)
  summary+=("Python $v: exit $rc, ${last:-no pytest summary (see $log)}, $((SECONDS - start)) s in all")
  [[ $rc -eq 0 ]] || status=1
done
printf '%s\n' "${summary[@]}"
exit $status
