"""keyward.aio: the asyncio client, against real agents: the sync client's
surface, awaited (get, watch as an async iterator, handle as an async
context manager kept current by a task, call_with_fallback for
coroutines), with the same errors, reports and header."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import urllib.error

import pytest
from conftest import PACKAGE_ROOT
from test_fallback import Provider, auth_failures
from test_key_use import eventually, key_uses, rotation_status

import keyward
import keyward.aio


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture
def provider():
    p = Provider()
    yield p
    p.server.shutdown()
    p.server.server_close()


def test_get_returns_the_exact_bytes_and_text(agent):
    secret = b"sk_live_\x00\xff binary\n"
    agent.put("prod/x", secret)
    agent.put("prod/t", "clé-\u00e9".encode())

    async def main():
        async with keyward.aio.Client(agent.socket) as client:
            return await client.get("prod/x"), await client.get("prod/t")

    ks, text = run(main())
    assert isinstance(ks, keyward.KeySet)
    assert (ks.key, ks.generation, ks.primary.version, ks.fallback) == ("prod/x", 1, 1, None)
    assert ks.primary.secret == secret and ks.state is keyward.RotationState.STEADY
    assert text.primary.text == "clé-\u00e9"
    assert "sk_live" not in repr(ks)


def test_errors_are_the_sync_clients(agent, tmp_path):
    async def main():
        async with keyward.aio.Client(str(tmp_path / "none" / "keys.sock")) as c:
            with pytest.raises(keyward.AgentUnavailable, match="is keywardd running"):
                await c.get("prod/x")
        async with keyward.aio.Client(agent.socket) as c:
            with pytest.raises(keyward.KeyNotFound, match="prod/nope"):
                await c.get("prod/nope")
            with pytest.raises(keyward.InvalidKey):
                await c.get("no-slash")

    run(main())


def test_watch_is_an_async_iterator_that_sees_a_rotation(agent):
    agent.put("prod/x", b"sk_old")

    async def main():
        async with keyward.aio.Client(agent.socket) as client:
            stream = client.watch(["prod/x"])
            first = await asyncio.wait_for(stream.__anext__(), 10)
            assert (first.generation, first.primary.secret) == (1, b"sk_old")
            await asyncio.to_thread(agent.stage, "prod/x", b"sk_new")
            staged = await asyncio.wait_for(stream.__anext__(), 10)
            assert staged.state is keyward.RotationState.STAGED and staged.fallback.secret == b"sk_new"
            await stream.aclose()  # cancels the stream without raising

            seen = []
            async with contextlib.aclosing(client.watch(["prod/x"])) as again:
                async for ks in again:
                    seen.append(ks.generation)
                    break
            assert seen == [2]

    run(main())


def test_handle_is_kept_current_by_a_task(agent):
    agent.put("prod/x", b"sk_old")

    async def main():
        async with keyward.aio.Client(agent.socket) as client:
            async with client.handle("prod/x") as h:
                assert h.primary.secret == b"sk_old" and h.fallback is None
                await asyncio.to_thread(agent.stage, "prod/x", b"sk_new")
                await h.wait_for_generation(2, timeout=10)
                assert h.fallback is not None and h.fallback.text == "sk_new"
                await asyncio.to_thread(agent.promote, "prod/x")
                # Nobody awaits the handle: its task updates it meanwhile.
                deadline = time.monotonic() + 10
                while h.current.generation < 3 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                assert h.primary.secret == b"sk_new" and h.current.state is keyward.RotationState.PROMOTED
            assert h._task is not None and h._task.done(), "the block's end stops the task"

            h2 = await client.handle("prod/x")  # the awaitable form
            assert h2.current.generation == 3
            await h2.close()

    run(main())


def test_handle_survives_an_agent_restart(agent):
    agent.put("prod/x", b"sk_old")

    async def main():
        async with keyward.aio.Client(agent.socket) as client:
            h = await client.handle("prod/x")
            await asyncio.to_thread(agent.stop)
            deadline = time.monotonic() + 10
            while h.last_error is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert isinstance(h.last_error, keyward.KeywardError)
            assert h.primary.secret == b"sk_old"

            await asyncio.to_thread(agent.start)
            await asyncio.to_thread(agent.stage, "prod/x", b"sk_new")
            await asyncio.to_thread(agent.promote, "prod/x")
            ks = await h.wait_for_generation(3, timeout=15)
            assert ks.primary.secret == b"sk_new" and h.last_error is None
        # Client.close closed the handle it made.
        assert h._task is not None and h._task.done()

    run(main())


def test_handle_of_unknown_key_fails_at_once_and_without_agent_times_out(agent, tmp_path):
    async def main():
        async with keyward.aio.Client(agent.socket) as client:
            started = time.monotonic()
            with pytest.raises(keyward.KeyNotFound, match="prod/missing"):
                async with client.handle("prod/missing", timeout=10):
                    pass
            assert time.monotonic() - started < 5, "not retried until the timeout"
        async with keyward.aio.Client(str(tmp_path / "keys.sock")) as client:
            with pytest.raises(keyward.AgentUnavailable, match="is keywardd running"):
                await client.handle("prod/x", timeout=0.5)

    run(main())


def test_call_with_fallback_awaits_the_fallback_and_reports(agent, provider):
    agent.put("prod/x", b"sk_old")
    agent.stage("prod/x", b"sk_new")
    provider.accepted = b"sk_new"  # the provider already revoked the old key

    async def call(secret: bytes) -> str:
        return await asyncio.to_thread(provider.call, secret)

    async def main():
        async with keyward.aio.Client(agent.socket) as client:
            async with client.handle("prod/x") as h:
                return await client.call_with_fallback(h, call, service="billing-worker")

    assert run(main()) == "ok"
    assert provider.seen == [b"sk_old", b"sk_new"]
    # Both reports were sent before close() returned (it waits for them).
    failure = auth_failures(agent)[0]
    assert failure["versions"][0]["version"] == 1 and "billing-worker" in failure["detail"]
    assert "HTTPError; retrying with fallback v2" in failure["detail"]
    use = eventually(lambda: key_uses(agent, "prod/x", 2), what="a key_use record of v2")[0]
    assert use["versions"][0]["role"] == "fallback"
    assert "sk_old" not in agent.audit_file.read_text()


def test_call_with_fallback_lets_other_errors_through(agent):
    agent.put("prod/x", b"sk_old")
    agent.stage("prod/x", b"sk_new")
    calls: list[bytes] = []

    async def fail(secret: bytes) -> str:
        calls.append(secret)
        raise urllib.error.HTTPError("http://x", 500, "Internal Server Error", {}, None)  # type: ignore[arg-type]

    async def main():
        async with keyward.aio.Client(agent.socket) as client:
            with pytest.raises(urllib.error.HTTPError) as e:
                await client.call_with_fallback("prod/x", fail)
            assert e.value.code == 500

    run(main())
    assert calls == [b"sk_old"]
    assert auth_failures(agent) == []


def test_a_report_to_a_stopped_agent_does_not_fail_the_call(agent):
    agent.put("prod/x", b"sk_old")
    agent.stage("prod/x", b"sk_new")

    class Response:
        def __init__(self, status_code: int) -> None:
            self.status_code = status_code

    async def call(secret: bytes) -> Response:
        return Response(200 if secret == b"sk_new" else 401)

    async def main():
        async with keyward.aio.Client(agent.socket) as client:
            h = await client.handle("prod/x")
            await asyncio.to_thread(agent.stop)  # the reports will fail
            started = time.monotonic()
            assert (await client.call_with_fallback(h, call)).status_code == 200
            h.report_use(2)
            assert time.monotonic() - started < 1, "the report delayed the call"

    run(main())


def test_the_watch_is_listed_as_a_library(agent):
    agent.put("prod/x", b"sk_1")

    async def main():
        async with keyward.aio.Client(agent.socket) as client:
            async with client.handle("prod/x"):
                return await asyncio.to_thread(rotation_status, agent, "prod", "x")

    status = run(main())
    mine = [s for s in status.subscribers if s.pid == os.getpid()]
    assert [s.kind for s in mine] == ["library"], status


def test_a_script_with_a_report_in_flight_reports_and_exits(agent):
    agent.put("prod/x", b"sk_old")
    agent.stage("prod/x", b"sk_new")
    script = (
        "import asyncio, keyward.aio\n"
        "async def call(secret):\n"
        "    if secret == b'sk_old':\n"
        "        raise PermissionError(401)\n"
        "    return 'ok'\n"
        "async def main():\n"
        "    async with keyward.aio.Client() as c:\n"
        "        print(await c.call_with_fallback('prod/x', call, is_auth_error=lambda o: isinstance(o, PermissionError)))\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "KEYWARD_SOCKET": agent.socket, "PYTHONPATH": str(PACKAGE_ROOT)},
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    assert out.stdout.decode().strip() == "ok"
    # Reported before the script exited (close() waits for reports).
    record = auth_failures(agent)[0]
    assert record["versions"][0]["version"] == 1 and "PermissionError; retrying with fallback v2" in record["detail"]


def test_report_use_from_a_worker_thread_is_sent_by_the_loop(agent):
    agent.put("prod/x", b"sk_1")

    async def main():
        async with keyward.aio.Client(agent.socket) as client:
            async with client.handle("prod/x") as h:
                # e.g. a blocking HTTP call made in a thread with the handle's key
                await asyncio.to_thread(h.report_use, 1, "worker-thread")

    run(main())  # close() waited for the report
    record = eventually(lambda: key_uses(agent, "prod/x", 1), what="a key_use record")[0]
    assert "worker-thread" in record["detail"]
