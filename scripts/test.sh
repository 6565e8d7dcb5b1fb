#!/usr/bin/env bash
# Set everything up, then run the whole test suite (unit, FUSE, Docker end-to-end).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup.sh" --test
cd "$here"
venv=${FUSEVOL_VENV:-/opt/fusevol}
# The tests import fusevol from the checkout: build the C helpers next to it.
# setuptools 77 reads the SPDX `license` of pyproject.toml (the venv's own is older).
"$venv/bin/pip" install -q "setuptools>=77"
"$venv/bin/python" setup.py -q build_ext --inplace
export FUSEVOL_REQUIRE_NATIVE=1
# Test from the checkout, with the installed dependencies.
exec env PYTHONPATH="$here" "$venv/bin/python" -m pytest "$@"
