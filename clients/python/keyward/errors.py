"""One exception hierarchy for everything the client raises.

gRPC status codes are mapped once, here, so callers catch
:class:`KeywardError` (or one of its subclasses) and never ``grpc.RpcError``.
Messages name the socket and what to do; they never contain secret bytes
(the agent's own messages never do either).
"""

from __future__ import annotations

import os

import grpc

__all__ = [
    "KeywardError",
    "AgentUnavailable",
    "PermissionDenied",
    "KeyNotFound",
    "InvalidKey",
    "UntrustedSocket",
    "SecretNotText",
]


class KeywardError(Exception):
    """Base class of every error raised by the keyward client.

    ``grpc_code`` is the gRPC status the agent (or the transport) gave, when
    there was one.
    """

    def __init__(self, message: str, *, grpc_code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.grpc_code = grpc_code


class AgentUnavailable(KeywardError):
    """The agent cannot be reached (no socket, connection refused) or it
    answered ``UNAVAILABLE`` (e.g. its audit log cannot be written)."""


class PermissionDenied(KeywardError):
    """The socket refused the connection, or the agent's policy does not let
    this caller read the key."""


class KeyNotFound(KeywardError):
    """The key does not exist."""


class InvalidKey(KeywardError):
    """The key name is malformed or its environment is not configured."""


class UntrustedSocket(KeywardError):
    """The socket is served by, or its path can be changed by, a uid that is
    neither root, this process's user, nor the agent's uid
    (``KEYWARD_AGENT_UID`` or ``Client(agent_uid=)``). Nothing was sent.

    ``uid`` is the uid at fault: the server's, or the owner of ``path``, the
    directory or file that lets it stand in for the agent. ``pid`` is the
    server's pid, when known.
    """

    def __init__(self, message: str, *, uid: int | None, pid: int | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.uid = uid
        self.pid = pid
        self.path = path


class SecretNotText(KeywardError, ValueError):
    """A secret read as ``.text`` is not UTF-8. The message names the
    version, its fingerprint and where the first invalid byte is, never the
    bytes themselves; ``.secret`` still gives them."""


def socket_permission_denied(socket: str, grpc_code: grpc.StatusCode | None = None) -> PermissionDenied:
    """The error for a socket whose mode or group keeps this user out."""
    return PermissionDenied(
        f"permission denied connecting to the keyward socket {socket}: this user may "
        "not connect; ask an operator to add it to the socket's group "
        "([sockets] service_group) or run the service as a user that may",
        grpc_code=grpc_code,
    )


# Transport errors carry the OS error in their details, e.g.
# "failed to connect to all addresses; last error: UNKNOWN:
# unix:/run/keyward/keys.sock: Permission denied". A server-sent UNAVAILABLE
# (audit failure) has the agent's own message instead.
_CONNECT_MARKERS = ("failed to connect", "connection refused", "no such file", "connect failed",
                    "socket closed", "connection reset", "broken pipe", "end of tcp stream")


def _is_transport_failure(details: str) -> bool:
    d = details.lower()
    return any(m in d for m in _CONNECT_MARKERS)


def not_running(socket: str, why: str) -> AgentUnavailable:
    """The error for an agent that cannot be reached on ``socket``."""
    return AgentUnavailable(
        f"cannot reach the keyward agent ({why}): is keywardd running? "
        f"socket {socket}; set KEYWARD_SOCKET (or pass socket=) if it lives elsewhere"
    )


def from_rpc_error(err: grpc.RpcError, socket: str) -> KeywardError:
    """Maps a failed call to the matching :class:`KeywardError`."""
    code: grpc.StatusCode | None = err.code() if hasattr(err, "code") else None
    details: str = (err.details() if hasattr(err, "details") else None) or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        if "permission denied" in details.lower():
            return socket_permission_denied(socket, code)
        if _is_transport_failure(details):
            if not os.path.exists(socket):
                why = "no socket at that path"
            elif "refused" in details.lower():
                why = "connection refused"
            else:
                why = "connection failed"
            err_ = not_running(socket, why)
            err_.grpc_code = code
            return err_
        return AgentUnavailable(f"keyward agent unavailable: {details}", grpc_code=code)
    if code == grpc.StatusCode.NOT_FOUND:
        return KeyNotFound(details or "key not found", grpc_code=code)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidKey(details or "invalid key", grpc_code=code)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(details or "permission denied", grpc_code=code)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return AgentUnavailable(
            f"the keyward agent on {socket} did not answer in time", grpc_code=code
        )
    name = code.name if code is not None else "UNKNOWN"
    return KeywardError(f"keyward agent refused the call ({name}): {details}", grpc_code=code)
