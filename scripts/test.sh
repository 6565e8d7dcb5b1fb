#!/usr/bin/env bash
# Set everything up, then run the whole test suite (unit, FUSE, Docker end-to-end).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup.sh" --test
cd "$here"
# Test from the checkout, with the installed dependencies.
exec env PYTHONPATH="$here" "${FUSEVOL_VENV:-/opt/fusevol}/bin/python" -m pytest "$@"
