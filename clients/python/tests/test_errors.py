"""Errors: one hierarchy, helpful messages, never a secret."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

import pytest
from conftest import PACKAGE_ROOT

import keyward

NOBODY = 65534


def test_no_agent_is_agent_unavailable_with_a_helpful_message(tmp_path):
    sock = str(tmp_path / "missing" / "keys.sock")
    with keyward.Client(sock) as c:
        with pytest.raises(keyward.AgentUnavailable) as e:
            c.get("prod/x")
    msg = str(e.value)
    assert "is keywardd running?" in msg and sock in msg and "KEYWARD_SOCKET" in msg, msg
    assert isinstance(e.value, keyward.KeywardError)


def test_unknown_key_is_key_not_found(agent, client):
    with pytest.raises(keyward.KeyNotFound, match="prod/nope"):
        client.get("prod/nope")


@pytest.mark.parametrize("key", ["prod/Upper", "prod/..", "qa/x", "no-slash", "/x"])
def test_malformed_or_unconfigured_key_is_invalid_key(agent, client, key):
    with pytest.raises(keyward.InvalidKey):
        client.get(key)


def test_environment_missing_from_the_config_is_invalid_key(agent_with_config):
    agent = agent_with_config("[environments.prod]\n")
    with keyward.Client(agent.socket) as c:
        with pytest.raises(keyward.InvalidKey, match="staging"):
            c.get("staging/x")


# Run as uid 65534: prints the exception's type and message.
AS_NOBODY = """
import sys, keyward
try:
    keyward.Client(sys.argv[1]).get(sys.argv[2])
    print("OK")
except keyward.KeywardError as e:
    print(type(e).__name__ + ": " + str(e))
"""


def _nobody(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        cmd, user=NOBODY, group=NOBODY, extra_groups=[], env=env, cwd="/", capture_output=True, timeout=60
    )


def python_for_nobody() -> tuple[str, dict[str, str]]:
    """An interpreter uid 65534 can run, with this venv's packages.

    The venv's python may be a symlink into a directory closed to other
    users (e.g. pyenv under /root); then the system python3 of the same
    minor version is used with the venv's site-packages on PYTHONPATH.
    """
    site = sysconfig.get_paths()["purelib"]
    env = {"PYTHONPATH": f"{PACKAGE_ROOT}:{site}", "PATH": "/usr/bin:/bin", "HOME": "/"}
    want = "%d.%d" % sys.version_info[:2]
    probe = f"import sys, grpc; assert '%d.%d' % sys.version_info[:2] == {want!r}"
    tried = []
    for python in (sys.executable, "/usr/bin/python" + want, "/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            if _nobody([python, "-c", probe], env).returncode == 0:
                return python, env
        except OSError as e:
            tried.append(f"{python}: {e.strerror}")
            continue
        tried.append(f"{python}: cannot import grpc or not Python {want}")
    pytest.fail("no Python interpreter that uid 65534 can run: " + "; ".join(tried))


def run_as_nobody(socket: str, key: str) -> str:
    python, env = python_for_nobody()
    out = _nobody([python, "-c", AS_NOBODY, socket, key], env)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return out.stdout.decode().strip()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="running a client as uid 65534 needs root")


@needs_root
def test_socket_closed_to_the_caller_is_permission_denied(agent_with_config):
    # The default service socket is 0660 root:root: uid 65534 cannot connect.
    agent = agent_with_config("")
    agent.put("prod/x", b"sk_not_for_nobody")
    line = run_as_nobody(agent.socket, "prod/x")
    assert line.startswith("PermissionDenied: "), line
    assert agent.socket in line and "service_group" in line, line
    assert "sk_not_for_nobody" not in line


@needs_root
def test_policy_denial_is_permission_denied_with_the_agents_message(agent_with_config):
    # uid 65534 may connect (socket group 65534) but is granted nothing.
    agent = agent_with_config('[sockets]\nservice_group = "65534"\nservice_mode = "0660"\n')
    agent.put("prod/x", b"sk_not_for_nobody")
    line = run_as_nobody(agent.socket, "prod/x")
    assert line.startswith("PermissionDenied: "), line
    assert "uid 65534" in line and "may not read prod/x" in line, line
    assert "sk_not_for_nobody" not in line
