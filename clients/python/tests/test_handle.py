"""KeyHandle: follows rotations and survives agent restarts."""

import time

import pytest

import keyward


def test_handle_follows_a_rotation(agent, client):
    agent.put("prod/x", b"sk_old")
    with client.handle("prod/x") as h:
        assert h.primary.secret == b"sk_old" and h.fallback is None

        agent.stage("prod/x", b"sk_new")
        h.wait_for_generation(2, timeout=10)
        assert h.fallback is not None and h.fallback.secret == b"sk_new"

        agent.promote("prod/x")
        h.wait_for_generation(3, timeout=10)
        assert h.primary.secret == b"sk_new"
        assert h.current.state is keyward.RotationState.PROMOTED

        agent.retire("prod/x")
        ks = h.wait_for_generation(4, timeout=10)
        assert ks.primary.secret == b"sk_new" and ks.fallback is None


def test_handle_survives_an_agent_restart(agent, client):
    agent.put("prod/x", b"sk_old")
    h = client.handle("prod/x")

    agent.stop()
    # While the agent is down the handle keeps serving what it had.
    deadline = time.monotonic() + 10
    while h.last_error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert isinstance(h.last_error, keyward.KeywardError)
    assert h.primary.secret == b"sk_old"

    agent.start()
    agent.stage("prod/x", b"sk_new")
    agent.promote("prod/x")

    ks = h.wait_for_generation(3, timeout=15)
    assert ks.primary.secret == b"sk_new"
    assert h.last_error is None
    h.close()


def test_handle_of_unknown_key_fails_at_once(client):
    started = time.monotonic()
    with pytest.raises(keyward.KeyNotFound, match="prod/missing"):
        client.handle("prod/missing", timeout=10)
    assert time.monotonic() - started < 5, "not retried until the timeout"


def test_handle_without_agent_times_out_with_a_clear_error(tmp_path):
    with keyward.Client(str(tmp_path / "keys.sock")) as c:
        with pytest.raises(keyward.AgentUnavailable, match="is keywardd running"):
            c.handle("prod/x", timeout=0.5)
