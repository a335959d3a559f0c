#!/usr/bin/env bash
# Builds the venv that tests/test_airflow.py runs Airflow in:
#
#   clients/python/tests/airflow/venv.sh     # prints the venv's python
#
# target/airflow-venv (or $KEYWARD_AIRFLOW_VENV), made with
# $KEYWARD_TEST_PYTHON -m venv (else python3) and
# `pip install -r requirements.txt -c constraints.txt` from PyPI. Made once:
# a marker file names a hash of both files, so a later run (target/ is kept
# between CI runs) only checks the marker, and a changed pin rebuilds it.
# Progress goes to stderr; exits non-zero when the venv cannot be built.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../../.." && pwd)"
py="${KEYWARD_TEST_PYTHON:-python3}"
venv="${KEYWARD_AIRFLOW_VENV:-$repo/target/airflow-venv}"
stamp="$(cat "$here/requirements.txt" "$here/constraints.txt" | sha256sum | cut -c1-16)"
marker="$venv/.keyward-ready-$stamp"

if [ -f "$marker" ]; then
  echo "$venv/bin/python"
  exit 0
fi
echo "building $venv (apache-airflow from PyPI; the first time takes a minute or more)" >&2
started=$(date +%s)
rm -rf "$venv"
"$py" -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --cache-dir "$repo/target/pip-cache" \
  -r "$here/requirements.txt" -c "$here/constraints.txt" >&2
"$venv/bin/python" -c 'import airflow, grpc, google.protobuf' >&2
touch "$marker"
echo "built $venv in $(( $(date +%s) - started )) s" >&2
echo "$venv/bin/python"
