"""A key kept up to date in the background by a task (:class:`KeyHandle`).

The asyncio twin of :class:`keyward.KeyHandle`: one task holds a
``WatchKeys`` stream open, stores each KeySet the agent pushes and reopens
the stream with capped, doubling backoff when it breaks, serving the last
KeySet meanwhile. The state and its rules are shared with the sync handle
(:mod:`keyward.handle_core`); only the waiting differs.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Generator

from ..client_name import CLIENT_METADATA
from ..core import watch_request
from ..errors import KeywardError
from ..handle_core import HandleCore
from ..keyset import KeySet

if TYPE_CHECKING:
    from .client import Client

__all__ = ["KeyHandle"]


class KeyHandle(HandleCore):
    """The current KeySet of one key, updated by a task as the agent pushes
    changes.

    Made by :meth:`keyward.aio.Client.handle`, and started by
    ``async with`` (stopped at the block's end) or by ``await`` (then
    ``await handle.close()``); either waits up to ``timeout`` seconds for
    the first KeySet. ``current``, ``primary`` and ``fallback`` are always
    the latest values received.
    """

    def __init__(
        self,
        client: "Client",
        key: str,
        *,
        timeout: float = 10.0,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        super().__init__(client, key, initial_backoff=initial_backoff, max_backoff=max_backoff)
        self._client = client
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None
        # Set and replaced on every change: whoever waits sees the next one.
        self._changed = asyncio.Event()

    async def start(self) -> "KeyHandle":
        """Starts the task (once) and waits for the first KeySet; raises as
        :meth:`keyward.Client.handle` does when none comes."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"keyward-watch {self.key}")
            self._client._handles.add(self)
        while self._current is None and self._fatal is None and not self._task.done():
            try:
                await asyncio.wait_for(self._changed.wait(), self._timeout)
            except asyncio.TimeoutError:
                break
        if self._current is None:
            await self.close()
            raise self._no_first_keyset(self._timeout)
        return self

    def __await__(self) -> Generator[Any, None, "KeyHandle"]:
        return self.start().__await__()

    async def __aenter__(self) -> "KeyHandle":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_for_generation(self, generation: int, timeout: float) -> KeySet:
        """Waits until a KeySet of at least ``generation`` has arrived;
        raises ``TimeoutError`` after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._current is None or self._current.generation < generation:
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                raise self._generation_timeout(generation, timeout) from None
        return self._current

    async def close(self) -> None:
        """Stops the task and ends the stream. Idempotent."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            # wait(), not await: a cancellation of the caller itself still
            # reaches it.
            await asyncio.wait({task})

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _run(self) -> None:
        request = watch_request([self.key])
        while True:
            call = None
            try:
                stub = self._client._stub or await self._client._connect()
                call = stub.WatchKeys(request, metadata=CLIENT_METADATA)
                async for event in call:
                    self._received(KeySet.from_proto(event.key_set))
                    self._notify()
                error: KeywardError = KeywardError(f"the agent ended the watch stream of {self.key}")
            except Exception as e:  # not CancelledError: close() ends the task
                error = self._stream_error(e)
            finally:
                if call is not None:
                    call.cancel()
            delay = self._failed(error)
            self._notify()
            if delay is None:
                return
            await asyncio.sleep(delay)
