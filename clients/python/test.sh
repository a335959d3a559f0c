#!/usr/bin/env bash
# The Python client's tests, run by scripts/test after `cargo test`:
#   1. the interpreter ($KEYWARD_TEST_PYTHON, the venv made from
#      tests/requirements.txt) has grpcio, grpcio-tools, protobuf, pytest,
#      build and mypy (installed from tests/requirements.txt if not);
#   2. the committed stubs in keyward/_proto match proto/ (gen.sh into a
#      temp dir, compared byte for byte);
#   3. the Airflow venv (tests/airflow/venv.sh: target/airflow-venv, built
#      once from PyPI and kept); if it cannot be built, tests/test_airflow.py
#      is skipped, saying why;
#   4. pytest against real agents ($KEYWARD_BIN_DIR/keywardd, default
#      target/debug), the package taken from this directory (PYTHONPATH: no
#      install, nothing written to the venv); tests/test_install.py installs
#      it into fresh temp venvs, tests/test_airflow.py runs Airflow in its
#      venv, tests/test_typing.py runs mypy --strict.
# Ends with exactly one line "client tests: N passed, M failed"; exits
# non-zero when anything failed.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

finish() { # passed failed
  echo "client tests: $1 passed, $2 failed"
  [ "$2" -eq 0 ] || exit 1
  exit 0
}

py="${KEYWARD_TEST_PYTHON:-}"
if [ -z "$py" ]; then
  echo "KEYWARD_TEST_PYTHON is not set: run scripts/test, or set it to a python (3.11) with tests/requirements.txt installed, e.g. target/test-venv/bin/python"
  finish 0 1
fi
if ! "$py" -c 'import grpc, grpc_tools, google.protobuf, pytest, build, mypy' 2>/dev/null; then
  echo "== installing tests/requirements.txt into $(dirname "$py")"
  if ! "$py" -m pip install --quiet --disable-pip-version-check -r "$repo/tests/requirements.txt"; then
    echo "cannot install tests/requirements.txt with $py"
    finish 0 1
  fi
fi
export KEYWARD_BIN_DIR="${KEYWARD_BIN_DIR:-$repo/target/debug}"
if [ ! -x "$KEYWARD_BIN_DIR/keywardd" ] || [ ! -x "$KEYWARD_BIN_DIR/keyward" ]; then
  echo "no keywardd/keyward in $KEYWARD_BIN_DIR: run \`cargo build\` or set KEYWARD_BIN_DIR"
  finish 0 1
fi

failed=0
echo "== python stubs up to date"
fresh="$(mktemp -d)"
trap 'rm -rf "$fresh"' EXIT
if ! KEYWARD_TEST_PYTHON="$py" bash "$here/gen.sh" "$fresh"; then
  echo "gen.sh failed"
  failed=1
elif ! diff -r -x __pycache__ "$here/keyward/_proto" "$fresh" >/dev/null; then
  diff -r -x __pycache__ "$here/keyward/_proto" "$fresh" | head -20
  echo "stubs are stale: run clients/python/gen.sh"
  failed=1
fi

echo "== airflow venv (clients/python/tests/airflow/venv.sh)"
airflow_log="$repo/target/airflow-venv.log"
mkdir -p "$repo/target"
if airflow_py="$(KEYWARD_TEST_PYTHON="$py" bash "$here/tests/airflow/venv.sh" 2>"$airflow_log")"; then
  cat "$airflow_log"
  echo "airflow venv: $airflow_py"
  export KEYWARD_AIRFLOW_PYTHON="$airflow_py"
else
  tail -5 "$airflow_log"
  if [ -n "${CI:-}" ]; then
    # In CI a missing Airflow venv is a missing install step, not a skip.
    echo "airflow venv: cannot be built (log: $airflow_log): failing (CI is set)"
    failed=1
  else
    echo "airflow venv: cannot be built (log: $airflow_log); tests/test_airflow.py will be skipped"
  fi
  export KEYWARD_AIRFLOW_SKIP="the Airflow venv could not be built (log: $airflow_log)"
fi

echo "== pytest (clients/python/tests)"
log="$(mktemp)"
trap 'rm -rf "$fresh" "$log"' EXIT
cd "$here"
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1 \
  "$py" -m pytest -q -rs -p no:cacheprovider tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# The summary is the last line, e.g. "2 failed, 25 passed, 1 skipped in 4.1s".
summary="$(grep -E '[0-9]+ (passed|failed|error)' "$log" | tail -1)"
count() { echo "$summary" | grep -Eo "[0-9]+ $1" | awk '{s+=$1} END {print s+0}'; }
passed=$(count passed)
failed=$((failed + $(count failed) + $(count 'errors?')))
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  echo "pytest exited with $status"
  failed=1
fi
finish "$passed" "$failed"
