#!/usr/bin/env bash
# Installs the dashboard's front-end libraries from the npm registry (pinned by
# frontend/package-lock.json) and copies the browser bundles into the Python package.
# Nothing built here is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v npm >/dev/null 2>&1; then
  echo "build_assets: npm is required to install the dashboard's chart library (install Node.js)" >&2
  exit 2
fi
(cd frontend && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
dest=src/tradepulse/api/static/vendor
mkdir -p "$dest"
cp frontend/node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.js "$dest/"
touch "$dest/.installed"
echo "assets: dashboard libraries installed"
