#!/usr/bin/env bash
# The whole test suite, in the venv made by scripts/setup.sh.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
exec "${IVL_VENV:-$REPO/.venv}/bin/python" -m pytest "$@"
