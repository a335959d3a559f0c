"""The ``x-keyward-client`` header: which program talks to the agent.

Every request a :class:`keyward.Client` sends carries it (a channel
interceptor), so that the agent can tell its consumers apart by kind: a
client library, which reports which key it uses, ``keyward run``, which
cannot, or anything else. ``keyward rotation-status`` and the rotation's
evidence gate list subscribers by that kind. It is a label, not a
credential: the agent identifies callers by the kernel's credentials on the
socket and never trusts this header for access.
"""

from __future__ import annotations

from typing import Any, Callable

import grpc

__all__ = ["CLIENT_HEADER", "CLIENT_METADATA", "CLIENT_NAME", "__version__"]

#: This package's version; tests/test_key_use.py checks that it matches
#: pyproject.toml.
__version__ = "0.1.0"

#: The gRPC metadata header that names the client program to the agent.
CLIENT_HEADER = "x-keyward-client"

#: What this library sends in it.
CLIENT_NAME = f"python/{__version__}"

#: The metadata every call carries (the asyncio client passes it per call,
#: which costs less than an interceptor there).
CLIENT_METADATA: tuple[tuple[str, str], ...] = ((CLIENT_HEADER, CLIENT_NAME),)


class ClientName(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds :data:`CLIENT_HEADER` to every unary and server-streaming call."""

    def _named(self, details: Any) -> Any:
        metadata = tuple((k, v) for k, v in (details.metadata or ()) if k != CLIENT_HEADER) + CLIENT_METADATA
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._named(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._named(details), request)


class _CallDetails(grpc.ClientCallDetails):
    """grpc.ClientCallDetails is abstract; this is it with fields."""

    def __init__(
        self,
        method: str,
        timeout: float | None,
        metadata: tuple[tuple[str, str], ...],
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression
