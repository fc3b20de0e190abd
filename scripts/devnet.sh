#!/usr/bin/env bash
# The README's first command: set up a virtualenv in .venv, install frostnode,
# and start a local federation on loopback (separate twistd processes) with
# `frostnode devnet`.  Ctrl-C stops every node.  Extra arguments go to devnet,
# e.g. `bash scripts/devnet.sh --nodes 7 --threshold 5`.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> creating .venv and installing frostnode (a few seconds)"
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q .
if .venv/bin/frostnode devnet --help >/dev/null 2>&1; then
    exec .venv/bin/frostnode devnet "$@"
fi
echo "==> this build has no networked devnet yet; running the in-process demonstration"
exec .venv/bin/frostnode demo "$@"
