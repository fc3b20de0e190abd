#!/usr/bin/env bash
# Set up a virtualenv in .venv (once), install frostnode with its test extras,
# and run the trial suite.  This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v tor >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tor >/dev/null) \
        || echo "warning: could not install tor; Tor tests will be skipped" >&2
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q ".[test]"
exec .venv/bin/python -m twisted.trial "${@:-tests}"
