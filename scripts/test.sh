#!/usr/bin/env bash
# Runs the whole suite. pytest exits 5 when it collects nothing: for us that means the suite is
# broken (a bad marker, an import path), so it fails loudly instead of passing silently.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
"$BIN/pytest" -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; the suite is missing or mis-selected" >&2
  exit 1
fi
exit "$rc"
