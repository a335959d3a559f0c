"""Client.get: exact bytes, safe repr, socket selection."""

from datetime import datetime

import pytest

import keyward
from keyward import KeySet, RotationState


def test_get_returns_the_exact_bytes_and_repr_hides_the_secret(agent, client):
    secret = b"sk_live_\x00\xff binary\n"
    agent.put("prod/x", secret)

    ks = client.get("prod/x")

    assert isinstance(ks, KeySet)
    assert ks.key == "prod/x"
    assert ks.primary.secret == secret
    assert ks.generation == 1
    assert ks.state is RotationState.STEADY
    assert ks.fallback is None
    assert ks.primary.version == 1
    assert isinstance(ks.primary.created_at, datetime) and ks.primary.created_at.tzinfo is not None
    assert ks.primary.expires_at is None
    for text in (repr(ks), str(ks), repr(ks.primary), str(ks.primary), f"{ks}"):
        assert "sk_live_" not in text and repr(secret) not in text, text
        assert ks.primary.fingerprint in text


def test_get_during_a_rotation_has_both_versions(agent, client):
    agent.put("prod/x", b"sk_old")
    agent.stage("prod/x", b"sk_new")

    ks = client.get("prod/x")

    assert ks.state is RotationState.STAGED
    assert ks.primary.secret == b"sk_old"
    assert ks.fallback is not None and ks.fallback.secret == b"sk_new"
    assert ks.fallback.version == ks.primary.version + 1
    assert "sk_new" not in repr(ks) and "sk_old" not in repr(ks)


def test_socket_comes_from_keyward_socket_env(agent, monkeypatch):
    agent.put("prod/x", b"sk_env")
    monkeypatch.setenv("KEYWARD_SOCKET", agent.socket)
    with keyward.Client() as c:
        assert c.socket == agent.socket
        assert c.get("prod/x").primary.secret == b"sk_env"


def test_default_socket_without_env(monkeypatch):
    monkeypatch.delenv("KEYWARD_SOCKET", raising=False)
    with keyward.Client() as c:
        assert c.socket == "/run/keyward/keys.sock"


def test_text_is_the_secret_as_utf8_and_says_clearly_when_it_is_not(agent, client):
    agent.put("prod/t", "sk_\u00e9t\u00e9".encode())
    agent.put("prod/b", b"sk_\xff\xfeSECRETTAIL")

    assert client.get("prod/t").primary.text == "sk_\u00e9t\u00e9"
    binary = client.get("prod/b").primary
    with pytest.raises(keyward.SecretNotText) as e:
        binary.text
    assert isinstance(e.value, keyward.KeywardError) and isinstance(e.value, ValueError)
    msg = str(e.value)
    assert "version 1" in msg and binary.fingerprint in msg and "offset 3" in msg and ".secret" in msg, msg
    # Nothing of the secret, in the message or chained to it (a
    # UnicodeDecodeError carries the whole input).
    assert "SECRETTAIL" not in msg and "\\xff" not in msg and "sk_" not in msg
    assert e.value.__cause__ is None and e.value.__context__ is None
    assert binary.secret == b"sk_\xff\xfeSECRETTAIL"
