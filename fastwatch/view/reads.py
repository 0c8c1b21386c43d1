"""The dashboard's store reads, away from the kernel's event loop: a store that is slow or hangs (a PostgreSQL
server that stopped answering) shows as a message on the page, never as widgets that no longer answer.

Reads run one at a time on a worker thread, each waited for at most `timeout` s: in a kernel the loop awaits them
(`read`, `then`); outside one (a script, a test) `then` reads and renders at once. While a read that overran still
runs, later reads fail at once with the same message instead of queueing behind it: a hanging store holds one
thread, never a growing queue of reads.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from ..errors import FastwatchError, StoreError

T = TypeVar('T')
READ_TIMEOUT = 10.0  # seconds a store read may take before the page says the store is not answering


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try: return asyncio.get_running_loop()
    except RuntimeError: return None


class StoreReads:
    """Runs reads of a store off the event loop. `on_error(message)` is told when a read fails or overruns, and
    `on_error(None)` when reads work again."""

    def __init__(self, on_error: Callable[[str | None], None], timeout: float = READ_TIMEOUT):
        self.on_error, self.timeout = on_error, timeout
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix='fastwatch-read')
        self._overrun: concurrent.futures.Future | None = None  # a read that overran, until it ends
        self._at_once = False

    def _submit(self, read: Callable[[], T]) -> concurrent.futures.Future:
        if self._overrun is not None:
            if not self._overrun.done(): raise self._not_answering()
            self._overrun = None
        return self._worker.submit(read)

    def _not_answering(self) -> StoreError:
        return StoreError(f'the store has not answered for {self.timeout:g} s; still trying')

    def now(self, read: Callable[[], T]) -> T:
        "Read and wait for it, at most `timeout` s (`StoreError` after that): for code that must have the data."
        future = self._submit(read)
        try: return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            self._overrun = future
            raise self._not_answering() from None

    async def read(self, read: Callable[[], T]) -> T:
        "Read on the worker and await it, at most `timeout` s (`StoreError` after that)."
        future = self._submit(read)
        try: return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.timeout)
        except asyncio.TimeoutError:
            self._overrun = future
            raise self._not_answering() from None

    @contextmanager
    def at_once(self) -> Iterator[None]:
        "Within this block `then` reads and uses at once, in a kernel too: for the page's first render."
        self._at_once = True
        try: yield
        finally: self._at_once = False

    def then(self, read: Callable[[], T], use: Callable[[T], None]) -> None:
        """Read, then `use` what was read: in a kernel, later, from a task of the event loop (errors go to
        `on_error`); outside one, or `at_once`, now."""
        loop = None if self._at_once else _running_loop()
        if loop is None:
            use(self.now(read))
            return

        async def read_then_use() -> None:
            try: found = await self.read(read)
            except FastwatchError as e:
                self.on_error(str(e))
                return
            use(found)
        loop.create_task(read_then_use())

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
