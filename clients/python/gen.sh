#!/usr/bin/env bash
# Regenerates the Python gRPC stubs in keyward/_proto/ from proto/.
#
#   clients/python/gen.sh [OUT_DIR]
#
# OUT_DIR defaults to clients/python/keyward/_proto (the committed copy);
# test.sh passes a temp dir and compares, so stale stubs fail the tests.
# Needs grpcio-tools (pinned in tests/requirements.txt); the interpreter is
# $KEYWARD_TEST_PYTHON, else python3.
#
# protoc names the output after the proto package (keyward/v1/keys_pb2.py)
# and keys_pb2_grpc.py imports it as `from keyward.v1 import keys_pb2`,
# which would resolve against this package (`keyward`) and fail. So the
# files are generated into a scratch dir, moved flat into _proto/, and that
# one import is rewritten to a relative one:
#   sed 's/^from keyward\.v1 import /from . import /'
# Output is byte-for-byte reproducible for a given grpcio-tools version.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$here/keyward/_proto}"
python="${KEYWARD_TEST_PYTHON:-python3}"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

"$python" -m grpc_tools.protoc -I "$repo/proto" \
  --python_out="$scratch" --grpc_python_out="$scratch" --pyi_out="$scratch" \
  "$repo/proto/keyward/v1/keys.proto"

mkdir -p "$out"
for f in keys_pb2.py keys_pb2.pyi keys_pb2_grpc.py; do
  sed 's/^from keyward\.v1 import /from . import /' "$scratch/keyward/v1/$f" > "$out/$f"
done
cat > "$out/__init__.py" <<'PY'
"""Generated gRPC stubs for proto/keyward/v1/keys.proto.

Do not edit: regenerate with clients/python/gen.sh.
"""
PY
