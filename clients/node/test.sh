#!/usr/bin/env bash
# The Node client's tests: install (npm ci), check the committed protos and
# generated types against the repo's proto/, build, type-check the
# examples (tsc --strict), and run the tests against real agents from
# KEYWARD_BIN_DIR (default: the repo's target/debug). npm's cache is the
# repo's target/npm-cache (CI keeps target/), which the install tests
# (test/install.test.mjs) use too. Ends with "client tests: N passed, M
# failed" and exits non-zero when anything failed.
set -uo pipefail
cd "$(dirname "$0")"
export KEYWARD_BIN_DIR="${KEYWARD_BIN_DIR:-$(cd ../.. && pwd)/target/debug}"
export npm_config_cache="${npm_config_cache:-$(cd ../.. && pwd)/target/npm-cache}"

failed=0
passed=0
report() {
  echo "client tests: ${passed} passed, ${failed} failed"
  [ "$failed" -eq 0 ]
  exit
}

for bin in keywardd keyward; do
  if [ ! -x "$KEYWARD_BIN_DIR/$bin" ]; then
    echo "no $KEYWARD_BIN_DIR/$bin: build it with cargo build (or set KEYWARD_BIN_DIR)"
    failed=1
    report
  fi
done

echo "== npm ci"
# --ignore-scripts: its prepare script would build here; the build below
# does, reporting its own failure.
if ! npm ci --ignore-scripts --prefer-offline --no-audit --no-fund --loglevel=error; then
  failed=1
  report
fi

echo "== generated types"
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
if ! node scripts/gen.mjs --out "$gen" ||
  ! diff -r proto "$gen/proto" ||
  ! diff -r src/generated "$gen/generated"; then
  echo "generated types are stale: run npm run gen in clients/node"
  failed=$((failed + 1))
fi

echo "== build"
if ! npm run --silent build; then
  failed=$((failed + 1))
  report
fi

echo "== examples (tsc --strict --noEmit)"
# examples/*.ts against the built package, and test/types/listeners.ts,
# whose @ts-expect-error lines fail this check if KeyHandle's events lose
# their types.
if node node_modules/typescript/bin/tsc --strict --noEmit -p examples; then
  passed=$((passed + 1))
else
  echo "the examples do not type-check"
  failed=$((failed + 1))
fi

echo "== node --test"
log="$gen/tap.log"
node --test --test-reporter=tap test/*.test.mjs 2>&1 | tee "$log"
runner=${PIPESTATUS[0]}
count() { grep -E "^# $1 [0-9]+$" "$log" | awk '{print $3}' | tail -1; }
pass=$(count pass)
fail=$(count fail)
cancelled=$(count cancelled)
skipped=$(count skipped)
if [ -z "$pass" ] || [ -z "$fail" ]; then
  echo "node --test did not print its summary (exit $runner)"
  failed=$((failed + 1))
else
  passed=$((passed + pass))
  failed=$((failed + fail + ${cancelled:-0}))
  [ "${skipped:-0}" -gt 0 ] && echo "(${skipped} skipped: see the SKIP lines above)"
  if [ "$runner" -ne 0 ] && [ "$fail" -eq 0 ] && [ "${cancelled:-0}" -eq 0 ]; then
    echo "node --test exited $runner"
    failed=$((failed + 1))
  fi
fi
report
