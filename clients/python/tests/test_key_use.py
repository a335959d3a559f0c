"""Key-use reports (ReportKeyUse) and the x-keyward-client header, against
real agents: a success tells the agent which version worked, once per
version per interval, a report the agent refuses never reaches the caller,
and the agent lists the client's watch as a library's."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

import keyward
from keyward.key_use import USE_REPORT_INTERVAL, UseCounts

from conftest import PACKAGE_ROOT

REPO = PACKAGE_ROOT.parent.parent


class Response:
    """What an HTTP library returns: a status."""

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


def accepts(good: bytes):
    """A service that accepts one secret and answers 401 to any other."""
    return lambda secret: Response(200 if secret == good else 401)


def key_uses(agent, key: str, version: int) -> list[dict]:
    return [
        r
        for r in agent.audit()
        if r.get("event") == "key_use" and r.get("key") == key and r["versions"][0]["version"] == version
    ]


@pytest.fixture
def metrics_dir() -> Iterator[Path]:
    # Short: a Unix socket path must fit in 108 bytes.
    d = Path(tempfile.mkdtemp(prefix="kwm-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def metrics_config(d: Path, extra: str = "") -> str:
    return f'[metrics]\nlisten = "unix:{d}/metrics.sock"\n{extra}'


def scrape(d: Path) -> str:
    """``GET /metrics`` on the agent's metrics socket: the body."""
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(str(d / "metrics.sock"))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: keyward\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    finally:
        s.close()
    head, _, body = b"".join(chunks).decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), head
    return body


def total(text: str, name: str) -> float:
    """The sum of every sample of ``name``, whatever its labels."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if re.match(rf"{name}[{{ ]", line))


def eventually(fn, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.025)


def test_a_success_reports_the_version_that_worked(agent, client):
    agent.put("prod/x", b"sk_old")
    agent.stage("prod/x", b"sk_new")
    handle = client.handle("prod/x")

    # The provider already switched: the fallback (v2) is what works.
    assert client.call_with_fallback(handle, accepts(b"sk_new"), service="billing-worker").status_code == 200

    record = eventually(lambda: key_uses(agent, "prod/x", 2), what="a key_use record of v2")[0]
    assert record["outcome"] == "reported"
    assert record["versions"][0]["role"] == "fallback"
    assert "1 successful call" in record["detail"] and "billing-worker" in record["detail"]
    # The refused primary is an auth failure, never a use.
    assert key_uses(agent, "prod/x", 1) == []

    # By key name, the primary working: its own report.
    client.call_with_fallback("prod/x", accepts(b"sk_old"))
    eventually(lambda: key_uses(agent, "prod/x", 1), what="a key_use record of v1")
    assert len(key_uses(agent, "prod/x", 2)) == 1


def test_an_error_status_is_not_a_use(agent, client):
    agent.put("prod/x", b"sk_1")

    assert client.call_with_fallback("prod/x", lambda s: Response(503)).status_code == 503
    time.sleep(0.3)
    assert key_uses(agent, "prod/x", 1) == []


def test_a_burst_of_successes_is_one_report(agent_with_config, metrics_dir):
    agent = agent_with_config(metrics_config(metrics_dir))
    agent.put("prod/x", b"sk_1")
    with keyward.Client(agent.socket) as client:
        handle = client.handle("prod/x")
        started = time.monotonic()
        for _ in range(50):
            client.call_with_fallback(handle, accepts(b"sk_1"))
        eventually(lambda: total(scrape(metrics_dir), "keyward_key_use_reports_total") >= 1, what="a report")
        # The handle shares the client's count.
        for _ in range(10):
            handle.report_use(1)
        assert time.monotonic() - started < USE_REPORT_INTERVAL, "the burst took longer than the interval"
        # Nothing else is on its way: a report is sent right after the
        # success that makes it due, if at all.
        time.sleep(0.5)
        assert total(scrape(metrics_dir), "keyward_key_use_reports_total") == 1
        assert len(key_uses(agent, "prod/x", 1)) == 1


def test_a_handle_reports_the_version_the_application_used(agent, client):
    agent.put("prod/x", b"sk_old")
    agent.stage("prod/x", b"sk_new")
    agent.promote("prod/x")
    handle = client.handle("prod/x")
    ks = handle.current

    handle.report_use(ks.primary.version, service="billing-worker")

    record = eventually(lambda: key_uses(agent, "prod/x", ks.primary.version), what="a key_use record")[0]
    assert record["versions"][0]["role"] == "primary"
    assert "billing-worker" in record["detail"]


def test_a_refused_report_does_not_fail_the_call(agent_with_config, metrics_dir):
    # One report per uid, then one a second: the agent refuses the rest.
    agent = agent_with_config(metrics_config(metrics_dir, "[alerts]\nreport_rate = 1\nreport_burst = 1\n"))
    agent.put("prod/x", b"sk_1")
    with keyward.Client(agent.socket) as client:
        handle = client.handle("prod/x")
        client.report_auth_failure("prod/x", 1, 401, "test", "uses up the burst")

        started = time.monotonic()
        assert client.call_with_fallback(handle, accepts(b"sk_1")).status_code == 200
        assert time.monotonic() - started < 1, "the report delayed the call"

        # The report was sent, and refused.
        eventually(
            lambda: total(scrape(metrics_dir), "keyward_auth_failure_reports_dropped_total") >= 1,
            what="the refusal of the key-use report",
        )
        assert key_uses(agent, "prod/x", 1) == []


def test_a_report_to_a_stopped_agent_does_not_fail_the_call(agent, client):
    agent.put("prod/x", b"sk_1")
    handle = client.handle("prod/x")
    agent.stop()  # the report will fail: nobody is listening

    started = time.monotonic()
    assert client.call_with_fallback(handle, accepts(b"sk_1")).status_code == 200
    handle.report_use(1)
    assert time.monotonic() - started < 1, "the report delayed the call"


def test_a_program_with_a_report_in_flight_exits(agent):
    agent.put("prod/x", b"sk_1")
    script = (
        "import keyward\n"
        "c = keyward.Client()\n"
        "c.call_with_fallback('prod/x', lambda s: 'ok')\n"
        "c.handle('prod/x').report_use(1)\n"
    )
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "KEYWARD_SOCKET": agent.socket, "PYTHONPATH": str(PACKAGE_ROOT)},
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    assert time.monotonic() - started < 10


def test_the_watch_is_listed_as_a_library(agent, client):
    agent.put("prod/x", b"sk_1")
    handle = client.handle("prod/x")
    assert handle.primary.version == 1

    status = rotation_status(agent, "prod", "x")
    mine = [s for s in status.subscribers if s.pid == os.getpid()]
    assert [s.kind for s in mine] == ["library"], status


def test_the_header_names_this_version():
    pyproject = tomllib.loads((PACKAGE_ROOT / "pyproject.toml").read_text())
    assert keyward.__version__ == pyproject["project"]["version"]
    from keyward.client_name import CLIENT_NAME

    assert CLIENT_NAME == f"python/{keyward.__version__}"


def test_use_counts_one_report_per_version_per_interval():
    u = UseCounts()
    ms = 0.001
    steps = [
        ("prod/a", 1, 0.0, 1),
        ("prod/a", 1, ms, None),
        ("prod/a", 2, 2 * ms, 1),
        ("prod/b", 1, 3 * ms, 1),
        ("prod/a", 1, USE_REPORT_INTERVAL - ms, None),
        # The interval has passed: the 3 successes since the report, this
        # one included.
        ("prod/a", 1, USE_REPORT_INTERVAL, 3),
        ("prod/a", 1, USE_REPORT_INTERVAL + ms, None),
        ("prod/a", 1, 3 * USE_REPORT_INTERVAL, 2),
    ]
    for key, version, at, want in steps:
        assert u.record(key, version, 1000.0 + at) == want, (key, version, at)
    # Memory stays bounded.
    for v in range(300):
        u.record("prod/c", v, 2000.0 + v * ms)
    assert len(u) <= 256


def rotation_status(agent, env: str, name: str):
    """GetRotationStatus on the agent's admin socket (``keyward
    rotation-status`` does not print the subscribers' kind). The admin
    protocol is not part of this package: its messages are built from
    proto/ at run time, in a pool of their own."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "admin.pb"
        from grpc_tools import protoc

        include = str(Path(protoc.__file__).parent / "_proto")
        args = ["protoc", f"-I{REPO / 'proto'}", f"-I{include}", "--include_imports", f"--descriptor_set_out={out}"]
        assert protoc.main([*args, "keyward/v1/admin.proto"]) == 0
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    request_type = message_factory.GetMessageClass(pool.FindMessageTypeByName("keyward.v1.RotationStatusRequest"))
    status_type = message_factory.GetMessageClass(pool.FindMessageTypeByName("keyward.v1.RotationStatus"))
    request = request_type()
    request.key.environment, request.key.name = env, name
    with grpc.insecure_channel(
        f"unix:{agent.dir / 'admin.sock'}", options=[("grpc.default_authority", "localhost")]
    ) as channel:
        call = channel.unary_unary(
            "/keyward.v1.Admin/GetRotationStatus",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=status_type.FromString,
        )
        return call(request, timeout=10)
