"""The client checks who serves the socket, and who could replace it, before
its first call sends anything: a listener run by another uid gets no byte,
and a socket in a directory another uid can write is refused even while
the real agent serves it (grpc's own reconnections could reach a
replacement). The fake listeners run as uid 2032, which needs root."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import keyward
import keyward.aio

ATTACKER = 2032
OTHER = 2037

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason=f"running a listener as uid {ATTACKER} needs root")

# The fake socket the Rust tests use too: accepts connections one after the
# other and, once none came for 2 s, writes the number of bytes received in
# all to OUT (OUT.ready once it listens).
FAKE_LISTENER = (Path(__file__).resolve().parents[3] / "tests/support/fake_listener.py").read_text()


class FakeListener:
    """FAKE_LISTENER run as ``uid`` at ``socket`` (in a directory it owns)."""

    def __init__(self, uid: int, socket: Path) -> None:
        self.socket = str(socket)
        self.out = Path(f"{socket}.received")
        ready = Path(f"{self.out}.ready")
        # Debian's python3: uid 2032 may run it (a python under /root may not).
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", "-c", FAKE_LISTENER, self.socket, str(self.out)],
            user=uid, group=uid, extra_groups=[], cwd="/",
        )
        deadline = time.monotonic() + 20
        while not ready.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"the fake listener exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                pytest.fail("the fake listener did not start")
            time.sleep(0.02)

    def received(self) -> int:
        """The bytes it received, once done."""
        self.proc.wait(timeout=40)
        return int(self.out.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def shared_tmp():
    """A temp dir other uids may enter (pytest's tmp_path is closed to
    them), with a short path for the socket."""
    d = Path(tempfile.mkdtemp(prefix="kwtrust-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def owned_dir(parent: Path, uid: int) -> Path:
    d = parent / "run"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    os.chown(d, uid, uid)
    return d


def raised(fn) -> BaseException | None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the test looks at it
        return e
    return None


@needs_root
def test_a_socket_served_by_another_uid_gets_nothing(shared_tmp):
    sock = owned_dir(shared_tmp, ATTACKER) / "keys.sock"
    fake = FakeListener(ATTACKER, sock)
    try:
        client = keyward.Client(str(sock), timeout=3)
        err = raised(lambda: client.get("prod/x"))
        # A handle gives up at once too, instead of retrying until its timeout.
        started = time.monotonic()
        handle_err = raised(lambda: client.handle("prod/x", timeout=10))
        handle_took = time.monotonic() - started
        client.close()
        assert fake.received() == 0, "the fake listener received bytes"
    finally:
        fake.stop()
    assert isinstance(err, keyward.UntrustedSocket), repr(err)
    assert isinstance(err, keyward.KeywardError)
    assert (err.uid, err.pid) == (ATTACKER, fake.proc.pid)
    msg = str(err)
    for part in (f"uid {ATTACKER} (pid {fake.proc.pid})", "nothing was sent", f"KEYWARD_AGENT_UID={ATTACKER}", str(sock)):
        assert part in msg, msg
    assert isinstance(handle_err, keyward.UntrustedSocket) and handle_took < 5, (handle_err, handle_took)


@needs_root
def test_agent_uid_trusts_that_uid(shared_tmp):
    # The same listener, declared as the agent's uid: the client talks to
    # it (the listener counts the bytes, and answers nothing).
    sock = owned_dir(shared_tmp, ATTACKER) / "keys.sock"
    fake = FakeListener(ATTACKER, sock)
    try:
        with keyward.Client(str(sock), agent_uid=ATTACKER, timeout=2) as client:
            with pytest.raises(keyward.KeywardError) as e:
                client.get("prod/x")
            assert not isinstance(e.value, keyward.UntrustedSocket), e.value
        assert fake.received() > 0, "a trusted listener received nothing"
    finally:
        fake.stop()


def test_keyward_agent_uid_must_be_a_number(monkeypatch, tmp_path):
    monkeypatch.setenv("KEYWARD_AGENT_UID", "keyward")
    with pytest.raises(keyward.KeywardError, match="KEYWARD_AGENT_UID='keyward' is not a uid"):
        keyward.Client(str(tmp_path / "keys.sock"))
    with pytest.raises(keyward.KeywardError, match="not a uid"):
        keyward.Client(str(tmp_path / "keys.sock"), agent_uid=-1)


@needs_root
def test_a_directory_another_uid_owns_or_others_can_write_is_refused(agent):
    # The real agent serves the socket, but its directory could let someone
    # else put a listener there for grpc's next reconnection.
    agent.put("prod/x", b"sk_behind_a_loose_directory")
    parent = agent.root
    try:
        os.chmod(parent, 0o775)
        with keyward.Client(agent.socket) as client:
            with pytest.raises(keyward.UntrustedSocket) as e:
                client.get("prod/x")
        msg = str(e.value)
        assert str(parent) in msg and "writable by its group" in msg and "nothing was sent" in msg, msg
        assert "sk_behind" not in msg

        os.chmod(parent, 0o755)
        os.chown(parent, OTHER, OTHER)
        with keyward.Client(agent.socket) as client:
            with pytest.raises(keyward.UntrustedSocket) as e:
                client.get("prod/x")
        assert e.value.uid == OTHER and e.value.path == str(parent), e.value
        assert f"owned by uid {OTHER}" in str(e.value), e.value

        # A root-owned sticky directory (like /tmp) is fine: there only an
        # entry's owner may replace it.
        os.chown(parent, 0, 0)
        os.chmod(parent, 0o1777)
        with keyward.Client(agent.socket) as client:
            assert client.get("prod/x").primary.secret == b"sk_behind_a_loose_directory"
    finally:
        os.chown(parent, 0, 0)
        os.chmod(parent, stat.S_IRWXU)


@needs_root
def test_the_async_client_checks_the_socket_the_same_way(shared_tmp):
    sock = owned_dir(shared_tmp, ATTACKER) / "keys.sock"
    fake = FakeListener(ATTACKER, sock)

    async def main():
        client = keyward.aio.Client(str(sock), timeout=3)
        try:
            errors = []
            for attempt in (client.get("prod/x"), client.handle("prod/x", timeout=10).start()):
                started = time.monotonic()
                try:
                    await attempt
                except Exception as e:  # noqa: BLE001 - the test looks at it
                    errors.append((e, time.monotonic() - started))
            return errors
        finally:
            await client.close()

    try:
        (err, _), (handle_err, handle_took) = asyncio.run(main())
        assert fake.received() == 0, "the fake listener received bytes"
    finally:
        fake.stop()
    assert isinstance(err, keyward.UntrustedSocket), repr(err)
    assert (err.uid, err.pid) == (ATTACKER, fake.proc.pid)
    assert "nothing was sent" in str(err)
    # The handle gives up at once, as the sync one does.
    assert isinstance(handle_err, keyward.UntrustedSocket) and handle_took < 5, (handle_err, handle_took)
