"""The asyncio connection to the agent's service socket (:class:`Client`).

The twin of :class:`keyward.Client` on ``grpc.aio``: one channel, made at
the first call once :mod:`keyward.trust` has checked who serves the socket
(the check runs in a worker thread: it connects and stats, which may
block), every request named by the ``x-keyward-client`` header, errors
mapped by :mod:`keyward.errors`, and the same settings, sticky fallback and
key-use counts (:mod:`keyward.core`). Reports are sent by tasks that never
delay nor fail the caller; :meth:`Client.close` gives them 2 s.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import AsyncGenerator, Awaitable, Callable, TypeVar, cast

import grpc
import grpc.aio

from .._proto import keys_pb2_grpc
from ..client_name import CLIENT_METADATA
from ..core import (
    CHANNEL_OPTIONS,
    REPORT_DRAIN_SECONDS,
    ClientCore,
    auth_failure_request,
    get_request,
    key_use_request,
    watch_request,
)
from ..errors import KeywardError, from_rpc_error
from ..fallback import AuthErrorPredicate
from ..handle_core import HandleCore
from ..keyset import KeySet
from ..sticky import DEFAULT_FALLBACK_COOLDOWN
from ..trust import check_socket
from .handle import KeyHandle

__all__ = ["Client"]

log = logging.getLogger("keyward")

T = TypeVar("T")


class Client(ClientCore):
    """An asyncio connection to the keyward agent's service socket.

    Arguments and checks are those of :class:`keyward.Client`: ``socket``
    (else ``$KEYWARD_SOCKET``, else ``/run/keyward/keys.sock``),
    ``timeout`` per unary call, ``agent_uid`` (else ``$KEYWARD_AGENT_UID``)
    trusted besides root and this user to serve the socket, and
    ``fallback_cooldown`` for :meth:`call_with_fallback`. Use as an async
    context manager or ``await client.close()``. Safe to share between the
    tasks of one event loop.
    """

    def __init__(
        self,
        socket: str | None = None,
        *,
        timeout: float = 10.0,
        agent_uid: int | None = None,
        fallback_cooldown: float = DEFAULT_FALLBACK_COOLDOWN,
    ) -> None:
        super().__init__(socket, timeout=timeout, agent_uid=agent_uid, fallback_cooldown=fallback_cooldown)
        self._channel: grpc.aio.Channel | None = None
        self._stub: keys_pb2_grpc.KeysStub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connect_lock = asyncio.Lock()
        self._handles: "weakref.WeakSet[KeyHandle]" = weakref.WeakSet()
        self._reports: set[asyncio.Task[None]] = set()
        self._closed = False

    async def _connect(self) -> keys_pb2_grpc.KeysStub:
        """The stub, on a channel made once the socket passed
        :func:`keyward.trust.check_socket`. Raises its errors (each call
        checks again until one passes). Callers use ``self._stub`` when it
        is set: no await on the hot path."""
        async with self._connect_lock:
            if self._closed:
                raise KeywardError(f"this keyward client ({self.socket}) is closed")
            if self._stub is None:
                target = await asyncio.to_thread(check_socket, self.socket, self.agent_uid, self.timeout)
                self._loop = asyncio.get_running_loop()
                self._channel = grpc.aio.insecure_channel(f"unix:{target}", options=CHANNEL_OPTIONS)
                self._stub = keys_pb2_grpc.KeysStub(self._channel)  # type: ignore[no-untyped-call]
            return self._stub

    # -- reading keys --------------------------------------------------------

    async def get(self, key: str) -> KeySet:
        """The current KeySet of ``key`` (``"ENV/NAME"``)."""
        request = get_request(key)
        stub = self._stub or await self._connect()
        try:
            return KeySet.from_proto(await stub.GetKey(request, timeout=self.timeout, metadata=CLIENT_METADATA))
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.socket) from None

    async def watch(self, keys: list[str]) -> AsyncGenerator[KeySet, None]:
        """Yields the KeySet of each key at once, then each key's KeySet after
        every change, until the stream ends (the agent stops:
        :class:`~keyward.AgentUnavailable`) or the iterator is closed
        (``await it.aclose()``, or ``async with
        contextlib.aclosing(client.watch(...)) as it``), which cancels the
        stream. For a key that stays current across agent restarts, use
        :meth:`handle`."""
        request = watch_request(keys)
        stub = self._stub or await self._connect()
        call = stub.WatchKeys(request, metadata=CLIENT_METADATA)
        try:
            async for event in call:
                yield KeySet.from_proto(event.key_set)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_rpc_error(e, self.socket) from None
        finally:
            call.cancel()

    def handle(self, key: str, *, timeout: float = 10.0) -> KeyHandle:
        """A :class:`~keyward.aio.KeyHandle` that keeps ``key`` current in
        the background, reconnecting (0.1 s doubling to 5 s) when the agent
        restarts. Start it with ``async with client.handle(key) as h:`` or
        ``h = await client.handle(key)``; either waits up to ``timeout``
        seconds for the first KeySet."""
        return KeyHandle(self, key, timeout=timeout)

    # -- reports -------------------------------------------------------------

    async def report_auth_failure(
        self, key: str, version: int, status_code: int, service: str, detail: str = ""
    ) -> None:
        """Tells the agent that ``version`` of ``key`` was refused with
        ``status_code``; raises :class:`~keyward.KeywardError` on failure
        (``call_with_fallback`` sends reports in the background instead)."""
        request = auth_failure_request(key, version, status_code, service, detail)
        stub = self._stub or await self._connect()
        try:
            await stub.ReportAuthFailure(request, timeout=self.timeout, metadata=CLIENT_METADATA)
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.socket) from None

    async def report_key_use(self, key: str, version: int, service: str, successes: int = 1) -> None:
        """Tells the agent that ``successes`` calls made by ``service`` with
        ``version`` of ``key`` succeeded (see
        :meth:`keyward.Client.report_key_use`); raises on failure."""
        request = key_use_request(key, version, service, successes)
        stub = self._stub or await self._connect()
        try:
            await stub.ReportKeyUse(request, timeout=self.timeout, metadata=CLIENT_METADATA)
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.socket) from None

    # -- calling an API with the key -----------------------------------------

    async def call_with_fallback(
        self,
        key: "str | HandleCore",
        fn: Callable[[bytes], Awaitable[T]],
        is_auth_error: AuthErrorPredicate | None = None,
        service: str | None = None,
        *,
        fallback_cooldown: float | None = None,
    ) -> T:
        """Awaits ``fn(primary.secret)``; on an auth rejection, reports it
        and awaits ``fn(fallback.secret)``. ``key`` is ``"ENV/NAME"``
        (fetched with :meth:`get`) or a handle (its current KeySet, no
        round trip). Everything else is :meth:`keyward.Client.call_with_fallback`:
        the same rejections (``is_auth_error``, default 401/403), the same
        sticky fallback for ``fallback_cooldown`` seconds, the same
        auth-failure and key-use reports, sent by tasks."""
        keyset = key.current if isinstance(key, HandleCore) else await self.get(key)
        attempt = self._attempt(keyset, is_auth_error, service, fallback_cooldown)
        for version in attempt.versions:
            try:
                value = await fn(version.secret)
            except Exception as e:  # classified by the attempt, re-raised if not a rejection
                if not attempt.rejected(version, e):
                    raise
                continue
            if not attempt.rejected(version, value):
                return cast(T, attempt.succeeded(version, value))
        return cast(T, attempt.give_up())

    # -- in the background ---------------------------------------------------

    def _in_background(
        self, name: str, send: Callable[[], Awaitable[object]], failed: Callable[[Exception], None]
    ) -> None:
        """Awaits ``send()`` in a task of the client's loop that close()
        waits for (2 s at most); nothing once the client is closed. Its
        error goes to ``failed``, never to the caller. Callable from another
        thread (``handle.report_use`` in a worker thread)."""
        if self._closed:
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        loop = self._loop or running
        if loop is None:
            log.debug("keyward: no event loop to send %s from; dropped", name)
            return

        async def run() -> None:
            try:
                await send()
            except Exception as e:  # the report must never hurt the caller
                failed(e)

        def spawn() -> None:
            if self._closed:
                return
            task = loop.create_task(run(), name=name)
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)

        if running is loop:
            spawn()
        else:
            loop.call_soon_threadsafe(spawn)

    # -- lifetime ------------------------------------------------------------

    async def close(self) -> None:
        """Closes the handles made from this client and the channel, after
        giving reports still in flight up to 2 s to be sent."""
        if self._closed:
            return
        self._closed = True
        for handle in list(self._handles):
            await handle.close()
        if self._reports:
            await asyncio.wait(set(self._reports), timeout=REPORT_DRAIN_SECONDS)
        async with self._connect_lock:
            if self._channel is not None:
                await self._channel.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"keyward.aio.Client(socket={self.socket!r})"
