"""Sticky fallback (/work/notes/sticky-fallback-spec.md, as in the Rust and
Node clients and `keyward proxy`): during an early revocation the revoked
primary receives at most one call per caller per cool-down, in the sync
and the async call_with_fallback alike, against real agents.

The provider is a function that refuses the primary's secret (401) and
accepts the fallback's; each test counts what it was given."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from test_fallback import auth_failures

import keyward
import keyward.aio
from keyward.sticky import MAX_REMEMBERED, MIN_REPORT_INTERVAL, RefusedVersions


class Refused(Exception):
    """What an HTTP library raises for a 401."""

    status = 401


class FakeProvider:
    """Accepts the secrets in ``accepted``, refuses every other with 401;
    counts the secrets it is given (thread-safe: several callers share it)."""

    def __init__(self, *accepted: bytes) -> None:
        self.accepted = set(accepted)
        self.seen: list[bytes] = []
        self._lock = threading.Lock()

    def __call__(self, secret: bytes) -> str:
        with self._lock:
            self.seen.append(secret)
        if secret not in self.accepted:
            raise Refused("401 Unauthorized")
        return "ok"

    def count(self, secret: bytes) -> int:
        with self._lock:
            return self.seen.count(secret)


class SyncCaller:
    """A caller using keyward.Client."""

    flavour = "sync"

    def __init__(self, socket: str, **options: Any) -> None:
        self.client = keyward.Client(socket, **options)

    def handle(self, key: str) -> keyward.KeyHandle:
        return self.client.handle(key)

    def wait_for_generation(self, handle: Any, generation: int) -> None:
        handle.wait_for_generation(generation, timeout=10)

    def call(self, key: Any, fn: FakeProvider, **options: Any) -> Any:
        return self.client.call_with_fallback(key, fn, **options)

    def close(self) -> None:
        self.client.close()


class AioCaller:
    """A caller using keyward.aio.Client on an event loop that runs all
    along in a thread of its own, as an asyncio service's does (its
    handle's task and its report tasks run between calls too)."""

    flavour = "aio"

    def __init__(self, socket: str, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def make() -> keyward.aio.Client:
            return keyward.aio.Client(socket, **options)

        self.client = self.run(make())

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def handle(self, key: str) -> keyward.aio.KeyHandle:
        return self.run(self.client.handle(key).start())

    def wait_for_generation(self, handle: Any, generation: int) -> None:
        self.run(handle.wait_for_generation(generation, timeout=10))

    def call(self, key: Any, fn: FakeProvider, **options: Any) -> Any:
        async def provider(secret: bytes) -> str:
            await asyncio.sleep(0)
            return fn(secret)

        return self.run(self.client.call_with_fallback(key, provider, **options))

    def close(self) -> None:
        self.run(self.client.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(params=[SyncCaller, AioCaller], ids=["sync", "aio"])
def caller(request, agent):
    """Makes callers of one flavour on the agent's socket; closes them."""
    made: list[Any] = []

    def make(**options: Any) -> Any:
        c = request.param(agent.socket, **options)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def calls(c: Any, key: Any, fn: FakeProvider, n: int, **options: Any) -> None:
    for _ in range(n):
        assert c.call(key, fn, **options) == "ok"


def failures_of(agent, version: int) -> list[dict]:
    return [r for r in auth_failures(agent) if r["versions"][0]["version"] == version]


def settle(agent, want: int, timeout: float = 5.0) -> list[dict]:
    """The auth-failure records once ``want`` have arrived (and 0.3 s more,
    for any that should not)."""
    deadline = time.monotonic() + timeout
    while len(auth_failures(agent)) < want and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    return auth_failures(agent)


def test_the_revoked_primary_gets_one_call_per_cooldown(agent, caller, capsys):
    agent.put("prod/x", b"sk_old")
    agent.stage("prod/x", b"sk_new")
    provider = FakeProvider(b"sk_new")  # the provider revoked the primary early

    sticky = caller(fallback_cooldown=5.0)
    h = sticky.handle("prod/x")
    calls(sticky, h, provider, 50)
    with_cooldown = provider.count(b"sk_old")
    assert with_cooldown == 1, provider.seen[:5]
    assert provider.count(b"sk_new") == 50
    # By name too (a get per call): the same memory, on the Client.
    calls(sticky, "prod/x", provider, 10)
    assert provider.count(b"sk_old") == 1
    # One report for the refused version, none for the fallback.
    records = settle(agent, 1)
    assert [r["versions"][0]["version"] for r in records] == [1], records

    plain = FakeProvider(b"sk_new")
    off = caller(fallback_cooldown=0)
    calls(off, off.handle("prod/x"), plain, 50)
    without_cooldown = plain.count(b"sk_old")
    assert without_cooldown == 50

    # Overridden per call, both ways.
    per_call = FakeProvider(b"sk_new")
    calls(sticky, h, per_call, 5, fallback_cooldown=0)
    calls(off, "prod/x", per_call, 5, fallback_cooldown=5.0)
    assert per_call.count(b"sk_old") == 5 + 1

    with capsys.disabled():
        print(
            f"\n[sticky fallback, {sticky.flavour}] calls to the revoked primary in 50 calls by one caller: "
            f"{with_cooldown} with the cool-down (5 s), {without_cooldown} without (fallback_cooldown=0)"
        )


def test_after_the_cooldown_the_primary_is_tried_once_more(agent, caller):
    agent.put("prod/x", b"sk_old")
    agent.stage("prod/x", b"sk_new")
    provider = FakeProvider(b"sk_new")
    c = caller(fallback_cooldown=0.5)
    h = c.handle("prod/x")

    calls(c, h, provider, 20)
    assert provider.count(b"sk_old") == 1
    time.sleep(0.6)
    calls(c, h, provider, 20)
    assert provider.count(b"sk_old") == 2, "tried once more after the cool-down, and marked again"
    # Refused again: its second report went out (the interval had passed).
    assert len(settle(agent, 2)) == 2


def test_a_pushed_keyset_clears_the_mark_at_once(agent, caller):
    agent.put("prod/x", b"sk_old")
    agent.stage("prod/x", b"sk_new")
    provider = FakeProvider(b"sk_new", b"sk_newer")
    c = caller(fallback_cooldown=30.0)
    h = c.handle("prod/x")
    calls(c, h, provider, 10)
    assert provider.count(b"sk_old") == 1
    assert c.client._refused.marked("prod/x") == [1]

    # The operator drops the staged key and stages another: v1 is still the
    # primary, with a new fallback (v3).
    agent.cli("abort", "prod/x")
    agent.stage("prod/x", b"sk_newer")
    c.wait_for_generation(h, 4)
    assert h.fallback is not None and h.fallback.version == 3
    assert c.client._refused.marked("prod/x") == [], "the handle's new KeySet clears the mark"

    # Well within the cool-down, the primary is tried again (once), then
    # skipped again.
    calls(c, h, provider, 10)
    assert provider.count(b"sk_old") == 2
    assert provider.count(b"sk_newer") == 10


def test_every_call_tries_the_primary_first_when_the_cooldown_is_0(agent, caller):
    agent.put("prod/x", b"sk_old")
    agent.stage("prod/x", b"sk_new")
    provider = FakeProvider(b"sk_new")
    c = caller(fallback_cooldown=0)
    h = c.handle("prod/x")
    started = time.monotonic()
    calls(c, h, provider, 10)
    assert provider.seen == [b"sk_old", b"sk_new"] * 10
    # Refusals reported at most every MIN_REPORT_INTERVAL, none lost: the
    # calls held back are counted into the next report.
    assert time.monotonic() - started < MIN_REPORT_INTERVAL, "the calls took longer than the report interval"
    first = settle(agent, 1)
    assert len(first) == 1, first
    time.sleep(MIN_REPORT_INTERVAL)
    calls(c, h, provider, 1)
    later = settle(agent, 2)
    assert len(later) == 2, later
    assert "(and 9 more refusals since the last report)" in later[-1]["detail"], later[-1]["detail"]


def test_one_report_per_version_per_interval_naming_the_count(agent, caller):
    agent.put("prod/x", b"sk_old")
    agent.stage("prod/x", b"sk_new")
    provider = FakeProvider()  # refuses both: each call tries both, as without the memory
    c = caller(fallback_cooldown=2.0)
    h = c.handle("prod/x")

    started = time.monotonic()
    for _ in range(20):
        with pytest.raises(Refused):
            c.call(h, provider)
    assert time.monotonic() - started < 2.0, "the calls took longer than the interval"
    assert provider.seen == [b"sk_old", b"sk_new"] * 20
    first = settle(agent, 2)
    assert sorted(r["versions"][0]["version"] for r in first) == [1, 2], first
    assert all("more refusals" not in r["detail"] for r in first), first

    time.sleep(2.1)
    with pytest.raises(Refused):
        c.call(h, provider)
    everything = settle(agent, 4)
    later = [r for r in everything if r not in first]
    assert sorted(r["versions"][0]["version"] for r in later) == [1, 2], [(r["versions"], r["detail"], r.get("outcome")) for r in everything]
    for r in later:
        assert ": Refused; retrying with " in r["detail"] or ": Refused; no fallback left" in r["detail"], r["detail"]
        assert "(and 19 more refusals since the last report)" in r["detail"], r["detail"]
        assert "sk_" not in r["detail"] and "401 Unauthorized" not in r["detail"]


def test_several_callers_each_reach_the_revoked_primary_once(agent, caller, capsys):
    agent.put("prod/x", b"sk_old")
    agent.stage("prod/x", b"sk_new")
    callers = 3

    flavours: set[str] = set()

    def run(cooldown: float) -> FakeProvider:
        provider = FakeProvider(b"sk_new")
        clients = [caller(fallback_cooldown=cooldown) for _ in range(callers)]
        flavours.update(c.flavour for c in clients)
        handles = [c.handle("prod/x") for c in clients]
        errors: list[BaseException] = []

        def work(c: Any, h: Any) -> None:
            try:
                calls(c, h, provider, 50)
            except BaseException as e:  # handed to the test
                errors.append(e)

        threads = [threading.Thread(target=work, args=(c, h)) for c, h in zip(clients, handles)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        return provider

    with_cooldown = run(5.0).count(b"sk_old")
    without = run(0).count(b"sk_old")
    assert with_cooldown == callers
    assert without == 50 * callers
    with capsys.disabled():
        print(
            f"\n[sticky fallback, {', '.join(flavours)}, {callers} callers x 50 calls] calls to the revoked primary: {with_cooldown} with the cool-down "
            f"({with_cooldown / callers:g} per caller), {without} without ({without / callers:g} per caller)"
        )


# -- the memory itself (no agent) ---------------------------------------------


def keyset(primary: int, fallback: int | None, key: str = "prod/x") -> keyward.KeySet:
    def version(n: int) -> keyward.KeyVersion:
        return keyward.KeyVersion(n, b"s%d" % n, f"fp{n}", None, None)

    return keyward.KeySet(
        key, 1, keyward.RotationState.STAGED, version(primary), version(fallback) if fallback else None
    )


def roles(order: list) -> list[str]:
    return [f"{role[0]}{v.version}" for role, v in order]


def test_the_memory_orders_marks_forgets_and_stays_bounded():
    m = RefusedVersions()
    ks = keyset(1, 2)
    assert roles(m.order(ks, 30, 0.0)) == ["p1", "f2"]
    assert m.refused(ks, 1, 30, 0.0) == 0  # the first refusal: report, 0 held
    assert roles(m.order(ks, 30, 1.0)) == ["f2", "p1"]
    assert m.refused(ks, 1, 30, 1.0) is None  # held back
    # The fallback refused too: both marked, primary first again.
    m.refused(ks, 2, 30, 2.0)
    assert roles(m.order(ks, 30, 3.0)) == ["p1", "f2"]
    # Cool-down over for both.
    assert roles(m.order(ks, 30, 40.0)) == ["p1", "f2"]
    assert m.refused(ks, 1, 30, 40.0) == 1  # report due, 1 held back since
    # A KeySet of other versions forgets the key's marks.
    assert roles(m.order(keyset(1, 3), 30, 41.0)) == ["p1", "f3"]
    assert m.marked("prod/x") == []
    # Cool-down 0: no marks; reports at most every MIN_REPORT_INTERVAL.
    assert m.refused(ks, 1, 0, 42.0) == 0 and m.refused(ks, 1, 0, 42.0) is None
    assert m.refused(ks, 1, 0, 42.0 + MIN_REPORT_INTERVAL) == 1
    assert m.marked("prod/x") == []
    # Bounded.
    for n in range(MAX_REMEMBERED + 10):
        m.refused(keyset(1, 2, key=f"prod/k{n}"), 1, 30, 50.0)
    assert len(m._marks) <= MAX_REMEMBERED and len(m._reports) <= MAX_REMEMBERED
