"""Real agents for the client tests.

Each test gets its own ``keywardd --dev DIR`` (the binaries come from
``$KEYWARD_BIN_DIR``, i.e. target/debug), driven with the real ``keyward``
CLI. Nothing of keyward is mocked: the tests see what a service would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PACKAGE_ROOT))

BIN_DIR = os.environ.get("KEYWARD_BIN_DIR", str(PACKAGE_ROOT.parent.parent / "target" / "debug"))
KEYWARDD = os.path.join(BIN_DIR, "keywardd")
KEYWARD = os.path.join(BIN_DIR, "keyward")


class Agent:
    """A dev-mode ``keywardd`` in its own directory."""

    def __init__(self, root: Path, config: str | None = None) -> None:
        self.root = root
        self.dir = root / "state"
        self.config: Path | None = None
        if config is not None:
            # A tree other uids may traverse, as in the Rust test kit (testkit/).
            os.chmod(root, 0o755)
            self.dir.mkdir(mode=0o755)
            os.chmod(self.dir, 0o755)
            self.config = root / "keyward.toml"
            self.config.write_text(config)
        self.log = root / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        return str(self.dir / "keys.sock")

    @property
    def audit_file(self) -> Path:
        return self.dir / "audit.jsonl"

    def start(self) -> None:
        """Starts the agent and waits until its service socket accepts."""
        cmd = [KEYWARDD, "--dev", str(self.dir)]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"keywardd exited with {self.proc.returncode}:\n{self.logs()}")
            if _accepts(self.socket):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"keywardd did not become ready:\n{self.logs()}")

    def stop(self) -> None:
        """SIGTERM, as systemd would; waits for a clean exit."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def cli(self, *args: str, stdin: bytes | None = None) -> str:
        """Runs ``keyward --dev DIR ARGS``; fails the test if it fails."""
        out = subprocess.run(
            [KEYWARD, "--dev", str(self.dir), *args],
            input=stdin if stdin is not None else b"",
            capture_output=True,
            timeout=30,
        )
        if out.returncode != 0:
            pytest.fail(f"keyward {' '.join(args)} failed ({out.returncode}): {out.stderr.decode(errors='replace')}")
        return out.stdout.decode(errors="replace")

    def put(self, key: str, secret: bytes) -> None:
        self.cli("put", key, "--raw", stdin=secret)

    def stage(self, key: str, secret: bytes) -> None:
        self.cli("stage", key, "--raw", stdin=secret)

    def promote(self, key: str) -> None:
        self.cli("promote", key)

    def retire(self, key: str) -> None:
        self.cli("retire", key, "--force")

    def audit(self) -> list[dict]:
        if not self.audit_file.exists():
            return []
        return [json.loads(line) for line in self.audit_file.read_text().splitlines() if line.strip()]

    def wait_for_audit(self, match, timeout: float = 5.0) -> dict:
        """The first audit record ``match`` accepts, polling the file."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.audit():
                if match(record):
                    return record
            if time.monotonic() > deadline:
                pytest.fail(f"no matching audit record within {timeout}s; log:\n{self.audit_file.read_text()}")
            time.sleep(0.05)


def _accepts(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _make_agent(config: str | None) -> Iterator[Agent]:
    if not os.access(KEYWARDD, os.X_OK):
        pytest.fail(f"{KEYWARDD} not found: build with `cargo build` or set KEYWARD_BIN_DIR")
    # Short paths: a Unix socket path must fit in 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="kwpy-"))
    agent = Agent(root, config)
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def agent() -> Iterator[Agent]:
    """A fresh dev-mode agent."""
    yield from _make_agent(None)


@pytest.fixture
def agent_with_config():
    """Starts a dev-mode agent with the given config file contents."""
    made: list[Iterator[Agent]] = []

    def start(config: str) -> Agent:
        gen = _make_agent(config)
        made.append(gen)
        return next(gen)

    yield start
    for gen in made:
        gen.close()


@pytest.fixture
def client(agent: Agent):
    import keyward

    with keyward.Client(agent.socket) as c:
        yield c


def next_within(it: Iterator, seconds: float = 10.0):
    """``next(it)``, failing the test instead of hanging."""
    box: list = []

    def run() -> None:
        try:
            box.append(("ok", next(it)))
        except BaseException as e:  # handed to the test thread
            box.append(("err", e))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if not box:
        pytest.fail(f"no item from the stream within {seconds}s")
    kind, value = box[0]
    if kind == "err":
        raise value
    return value
