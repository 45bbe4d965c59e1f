"""Bounded generation: a few worker threads, a bounded wait queue, and cancellation between chunks."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from utter_tts.errors import sticky_device_error
from utter_tts.service.http_errors import APIError, device_fault_error

T = TypeVar("T")


class GenerationPool:
    """Runs model work in threads, never on the event loop.

    At most `max_concurrency` jobs run; up to `max_queue` more wait for a slot; beyond that a request
    gets 429 with Retry-After. A slot is released when its thread stops, which happens at the next
    chunk boundary after the consumer cancels (client gone), so a disconnect frees capacity promptly.
    """

    def __init__(
        self, max_concurrency: int, max_queue: int, retry_after_s: int = 2, chunk_delay_s: float = 0.0
    ):
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.chunk_delay_s = chunk_delay_s
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="utter-gen")
        self._sem = asyncio.Semaphore(max_concurrency)
        self.waiting = 0
        self.active = 0
        self.closing = False
        self._cancels: set[threading.Event] = set()
        # told (on the event loop) when work failed with a sticky device error: the process must go
        self.on_device_fault: Callable[[str], None] | None = None

    async def _acquire(self) -> None:
        if self.closing:
            raise APIError(503, "server is shutting down", "shutting_down", headers=self._retry())
        if self.active + self.waiting >= self.max_concurrency + self.max_queue:
            raise APIError(
                429,
                f"server busy: {self.active} generating and {self.waiting} waiting; retry shortly",
                "queue_full",
                headers=self._retry(),
            )
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.active += 1

    def _release(self) -> None:
        self.active -= 1
        self._sem.release()

    def _retry(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}

    async def run(self, fn: Callable[[], T]) -> T:
        """Run one blocking call (e.g. building a voice) in a slot and return its result."""
        await self._acquire()
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._executor, fn)
        try:
            return await asyncio.shield(fut)
        except Exception as e:
            raise self._as_device_fault(e) from e
        finally:
            # The thread cannot be interrupted; the slot is freed when it actually finishes.
            fut.add_done_callback(lambda _: self._release())

    async def stream(self, make_chunks: Callable[[threading.Event], Iterator[Any]]) -> AsyncIterator[Any]:
        """Iterate `make_chunks(cancel)` in a worker thread, yielding each item on the event loop.

        When the consumer stops early (client disconnected, error while sending) `cancel` is set; the
        worker closes the model's iterator at the next chunk and frees the slot.
        """
        await self._acquire()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        self._cancels.add(cancel)

        def post(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # event loop already closed (shutdown): nobody is listening
                pass

        def work() -> None:
            try:
                chunks = make_chunks(cancel)
                try:
                    for chunk in chunks:
                        if cancel.is_set():
                            break
                        post(("chunk", chunk))
                        if self.chunk_delay_s:
                            cancel.wait(self.chunk_delay_s)
                        if cancel.is_set():
                            break
                finally:
                    close = getattr(chunks, "close", None)
                    if close is not None:
                        close()
                post(("end", None))
            except BaseException as e:  # handed to the consumer, which maps it to a response
                post(("error", e))
            finally:
                self._cancels.discard(cancel)
                try:
                    loop.call_soon_threadsafe(self._release)
                except RuntimeError:
                    pass

        loop.run_in_executor(self._executor, work)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "chunk":
                    yield value
                elif kind == "end":
                    return
                else:
                    raise self._as_device_fault(value)
        finally:
            cancel.set()

    def _as_device_fault(self, error: BaseException) -> BaseException:
        """`error` as the client sees it: a sticky device error is the server's GPU gone (503, retry,
        reported to `on_device_fault`); anything else as it is."""
        reason = sticky_device_error(error)
        if reason is None:
            return error
        if self.on_device_fault is not None:
            self.on_device_fault(reason)
        return device_fault_error(self.retry_after_s)

    def cancel_all(self) -> None:
        """Ask every running generation to stop at its next chunk (graceful shutdown)."""
        self.closing = True
        for cancel in list(self._cancels):
            cancel.set()

    async def drain(self, timeout_s: float) -> None:
        """Wait for running work to finish, up to `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
