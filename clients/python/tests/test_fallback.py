"""call_with_fallback against a real HTTP server and a real agent."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import keyward


class Provider:
    """An HTTP API that accepts one bearer token and answers 401 to others."""

    def __init__(self) -> None:
        self.accepted: bytes = b""
        self.seen: list[bytes] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                token = self.headers.get("Authorization", "").removeprefix("Bearer ").encode()
                provider.seen.append(token)
                ok = token == provider.accepted
                body = b"ok" if ok else b"unauthorized"
                self.send_response(200 if ok else 401)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/me"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def call(self, secret: bytes) -> str:
        req = urllib.request.Request(self.url, headers={"Authorization": "Bearer " + secret.decode()})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.read().decode()


@pytest.fixture
def provider():
    p = Provider()
    yield p
    p.server.shutdown()
    p.server.server_close()


def auth_failures(agent) -> list[dict]:
    return [r for r in agent.audit() if r.get("event") == "auth_failure"]


def test_rejected_primary_falls_back_and_is_reported(agent, client, provider):
    agent.put("prod/x", b"sk_old")
    agent.stage("prod/x", b"sk_new")
    provider.accepted = b"sk_new"  # the provider already revoked the old key
    handle = client.handle("prod/x")
    primary_version = handle.primary.version

    result = client.call_with_fallback(handle, provider.call, service="billing-worker")

    assert result == "ok"
    assert provider.seen == [b"sk_old", b"sk_new"]
    record = agent.wait_for_audit(lambda r: r.get("event") == "auth_failure", timeout=5)
    assert record["key"] == "prod/x"
    assert record["versions"][0]["version"] == primary_version
    assert record["versions"][0]["role"] == "primary"
    assert "status 401" in record["detail"] and "billing-worker" in record["detail"]
    assert "sk_old" not in agent.audit_file.read_text()


def test_accepted_primary_is_used_alone_and_not_reported(agent, client, provider):
    agent.put("prod/x", b"sk_old")
    agent.stage("prod/x", b"sk_new")
    provider.accepted = b"sk_old"

    assert client.call_with_fallback("prod/x", provider.call) == "ok"
    assert provider.seen == [b"sk_old"]
    time.sleep(0.3)
    assert auth_failures(agent) == []


def test_other_errors_propagate_without_fallback(agent, client):
    agent.put("prod/x", b"sk_old")
    agent.stage("prod/x", b"sk_new")
    calls: list[bytes] = []

    def fail(secret: bytes) -> str:
        calls.append(secret)
        raise urllib.error.HTTPError("http://x", 500, "Internal Server Error", {}, None)  # type: ignore[arg-type]

    with pytest.raises(urllib.error.HTTPError) as e:
        client.call_with_fallback("prod/x", fail)
    assert e.value.code == 500
    assert calls == [b"sk_old"]


def test_returned_401_counts_as_a_rejection(agent, client):
    agent.put("prod/x", b"sk_old")
    agent.stage("prod/x", b"sk_new")

    class Response:
        def __init__(self, status_code: int) -> None:
            self.status_code = status_code

    result = client.call_with_fallback("prod/x", lambda s: Response(401 if s == b"sk_old" else 200))
    assert result.status_code == 200
    agent.wait_for_audit(lambda r: r.get("event") == "auth_failure" and r["versions"][0]["version"] == 1)


def test_both_rejected_reraises_the_last_error_and_reports_both(agent, client, provider):
    agent.put("prod/x", b"sk_old")
    agent.stage("prod/x", b"sk_new")
    provider.accepted = b"neither"

    with pytest.raises(urllib.error.HTTPError) as e:
        client.call_with_fallback("prod/x", provider.call, service="svc")
    assert e.value.code == 401
    assert provider.seen == [b"sk_old", b"sk_new"]
    deadline = time.monotonic() + 5
    while len(auth_failures(agent)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(r["versions"][0]["version"] for r in auth_failures(agent)) == [1, 2]


def test_custom_predicate_and_no_fallback(agent, client):
    agent.put("prod/x", b"sk_only")

    class Denied(Exception):
        pass

    def call(secret: bytes) -> str:
        raise Denied("token rejected")

    with pytest.raises(Denied):
        client.call_with_fallback("prod/x", call, is_auth_error=lambda o: isinstance(o, Denied))
    agent.wait_for_audit(lambda r: r.get("event") == "auth_failure")


def test_a_failing_report_never_reaches_the_caller(agent, client, provider):
    agent.put("prod/x", b"sk_old")
    agent.stage("prod/x", b"sk_new")
    provider.accepted = b"sk_new"
    handle = client.handle("prod/x")
    agent.stop()  # the report will fail: nobody is listening

    started = time.monotonic()
    assert client.call_with_fallback(handle, provider.call) == "ok"
    assert time.monotonic() - started < 2, "the report must not delay the call"


def test_example_fallback_http_script(agent, provider):
    import os
    import subprocess
    import sys

    from conftest import PACKAGE_ROOT

    agent.put("prod/billing-api", b"sk_old")
    agent.stage("prod/billing-api", b"sk_new")
    provider.accepted = b"sk_new"
    example = PACKAGE_ROOT.parent.parent / "examples" / "python" / "fallback_http.py"

    out = subprocess.run(
        [sys.executable, str(example), provider.url],
        env={**os.environ, "KEYWARD_SOCKET": agent.socket, "PYTHONPATH": str(PACKAGE_ROOT)},
        capture_output=True,
        timeout=60,
    )

    assert out.returncode == 0, out.stderr.decode(errors="replace")
    assert out.stdout.decode().strip() == "ok"
    assert b"sk_old" not in out.stdout + out.stderr and b"sk_new" not in out.stdout + out.stderr
    # Reported before the script exited (Client.close waits for reports).
    record = next(r for r in agent.audit() if r.get("event") == "auth_failure")
    assert record["versions"][0]["version"] == 1
    assert "fallback_http.py" in record["detail"] and "retrying with fallback v2" in record["detail"]
