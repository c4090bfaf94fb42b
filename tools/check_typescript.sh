#!/usr/bin/env bash
# The TypeScript client's checks (`make lint`): its dependencies from the lockfile,
# tsc --strict, and its generated types current with the service's OpenAPI document.
#   tools/check_typescript.sh PYTHON
set -euo pipefail
python=${1:-.venv/bin/python}
cd "$(dirname "$0")/.."
tools/ensure_test_deps.sh node
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd clients/typescript && npm ci --no-audit --no-fund --silent && npm run --silent typecheck)
"$python" tools/openapi_json.py "$tmp/openapi.json"
if ! diff -q clients/typescript/openapi.json "$tmp/openapi.json" >/dev/null; then
  echo "clients/typescript/openapi.json is not the service's document: run" >&2
  echo "  $python tools/openapi_json.py clients/typescript/openapi.json && (cd clients/typescript && npm run generate)" >&2
  exit 1
fi
(cd clients/typescript && npx --no-install openapi-typescript openapi.json -o "$tmp/schema.ts" >/dev/null 2>&1)
if ! diff -q clients/typescript/src/schema.ts "$tmp/schema.ts" >/dev/null; then
  echo "clients/typescript/src/schema.ts is stale: (cd clients/typescript && npm run generate)" >&2
  exit 1
fi
echo "typescript: tsc strict, types current"
