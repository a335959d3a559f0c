"""Client.watch: the initial KeySet, then every change."""

from conftest import next_within

from keyward import RotationState


def test_watch_sees_a_rotation(agent, client):
    agent.put("prod/x", b"sk_old")
    stream = client.watch(["prod/x"])

    first = next_within(stream)
    assert (first.generation, first.primary.secret, first.fallback) == (1, b"sk_old", None)

    agent.stage("prod/x", b"sk_new")
    staged = next_within(stream)
    assert staged.generation == 2 and staged.state is RotationState.STAGED
    assert staged.fallback is not None and staged.fallback.secret == b"sk_new"

    agent.promote("prod/x")
    promoted = next_within(stream)
    assert promoted.generation == 3 and promoted.state is RotationState.PROMOTED
    assert promoted.primary.secret == b"sk_new"
    assert promoted.fallback is not None and promoted.fallback.secret == b"sk_old"

    stream.close()  # cancels the stream without raising


def test_watch_several_keys_sends_each_at_once(agent, client):
    agent.put("prod/a", b"sk_a")
    agent.put("staging/b", b"sk_b")
    stream = client.watch(["prod/a", "staging/b"])
    got = {next_within(stream).key for _ in range(2)}
    assert got == {"prod/a", "staging/b"}
    stream.close()
