"""Types: ``mypy --strict`` passes on the package and on examples/ (sync
and async), and the examples run against a real agent. mypy's cache lives
in target/mypy-cache (kept between runs)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import PACKAGE_ROOT
from test_fallback import Provider

REPO = PACKAGE_ROOT.parent.parent


def mypy(*targets: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(REPO / "target" / "mypy-cache"), *targets],
        cwd=PACKAGE_ROOT,  # its pyproject.toml holds the configuration
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_mypy_strict_passes_on_the_package_and_the_examples():
    out = mypy("keyward", "examples")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success: no issues found" in out.stdout


def test_mypy_sees_the_packages_types(tmp_path):
    # The check above could pass with everything typed Any; this one shows
    # the types reach a caller's code, sync and async.
    wrong = tmp_path / "wrong.py"
    wrong.write_text(
        "import keyward, keyward.aio\n"
        "async def f(c: keyward.aio.Client, s: keyward.Client) -> None:\n"
        "    n: int = (await c.get('prod/x')).primary.text\n"
        "    b: str = s.get('prod/x').primary.secret\n"
        "    await c.call_with_fallback('prod/x', lambda secret: 1)\n"
    )
    out = mypy(str(wrong))
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stdout
    assert 'wrong.py:3: error: Incompatible types in assignment (expression has type "str", variable has type "int")' in text, text
    assert 'wrong.py:4: error: Incompatible types in assignment (expression has type "bytes", variable has type "str")' in text, text
    assert "wrong.py:5: error:" in text and "Awaitable" in text, text


@pytest.mark.parametrize("example", ["quickstart.py", "quickstart_async.py"])
def test_the_examples_run(agent, example):
    agent.put("prod/billing-api", b"sk_old")
    agent.stage("prod/billing-api", b"sk_new")
    provider = Provider()
    provider.accepted = b"sk_new"
    try:
        out = subprocess.run(
            [sys.executable, str(PACKAGE_ROOT / "examples" / example), "prod/billing-api"],
            env={**os.environ, "KEYWARD_SOCKET": agent.socket, "API_URL": provider.url, "PYTHONPATH": str(PACKAGE_ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        provider.server.shutdown()
        provider.server.server_close()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("KeySet(key='prod/billing-api'") and "ok" in lines, out.stdout
    assert "sk_old" not in out.stdout + out.stderr and "sk_new" not in out.stdout + out.stderr
    assert provider.seen == [b"sk_old", b"sk_new"]
