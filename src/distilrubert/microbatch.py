"""Micro-batching for servers: concurrent requests' items joined into one model call.

Used by ``serve`` (``/embed`` and ``/v1/embeddings`` share one batcher per pooling). Clients that wait
for their answer before sending again all come back *after* a batch ends, so a greedy worker would
alternate half batches; ``adaptive`` lets a batch with fewer requests than the previous one wait for the
rest, at most as long as the previous forward pass took. A batch that fails is rerun one request at a
time, so an input that breaks the model fails only its own request.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["MicroBatcher", "QueueFull"]


class QueueFull(RuntimeError):
    """``submit`` found ``max_queue`` requests already waiting: the caller answers 503 instead of queueing."""


class MicroBatcher:
    """Collects items from concurrent requests into one call of ``fn(items) -> rows``.

    ``submit(items)`` waits until a worker has run ``fn`` over a batch that contains ``items`` and
    returns their rows. Requests that queued up while the previous batch ran join the next one; with
    ``max_wait > 0`` a batch that is not full waits that long for more; with ``adaptive`` a batch with
    fewer requests than the previous one waits for the missing ones for up to the previous forward pass's
    duration (capped by ``adaptive_cap`` seconds).
    """

    def __init__(self, fn, executor: ThreadPoolExecutor, max_batch: int, max_wait: float, on_batch=None,
                 adaptive: bool = False, adaptive_cap: float = 0.05, max_queue: int = 0):
        self.fn, self.executor, self.max_batch, self.max_wait = fn, executor, max_batch, max_wait
        self.on_batch = on_batch
        self.adaptive, self.adaptive_cap = adaptive, adaptive_cap
        self.max_queue = max_queue  # requests waiting at most (0: unbounded); beyond, submit raises QueueFull
        self.expected = 1  # requests in the previous batch
        self.last_run = 0.0  # seconds the previous forward pass took
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue()
        self.task = self.loop.create_task(self._worker())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def submit(self, items: list) -> Any:
        if self.loop is not asyncio.get_running_loop():  # started lazily when run without lifespan events
            self.start()
        if self.max_queue and self.queue.qsize() >= self.max_queue:
            # Bounded, so that latency under overload is bounded too: a full queue refuses at once.
            raise QueueFull(f"{self.queue.qsize()} requests are already waiting (the limit is {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((items, future))
        return await future

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = [await self.queue.get()]
            size = len(pending[0][0])
            # Take every request that queued up while the previous batch ran; then wait for more company only
            # up to max_wait, or (adaptive) while fewer requests than last time are here, for at most the
            # previous forward pass's duration.
            start = loop.time()
            deadline = start + self.max_wait
            adaptive_deadline = start + min(self.last_run, self.adaptive_cap) if self.adaptive else start
            while size < self.max_batch:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    until = max(deadline, adaptive_deadline) if len(pending) < self.expected else deadline
                    timeout = until - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), timeout)
                    except TimeoutError:
                        break
                pending.append(item)
                size += len(item[0])
            items = [x for request, _ in pending for x in request]
            self.expected = len(pending)
            run_start = loop.time()
            try:
                rows = await loop.run_in_executor(self.executor, self.fn, items)
                self.last_run = loop.time() - run_start
            except Exception as err:
                if len(pending) == 1:
                    if not pending[0][1].done():
                        pending[0][1].set_exception(err)
                else:  # one bad request must not fail the others: rerun the batch one request at a time
                    logger.warning("a micro-batch of %d requests failed (%s: %s); retrying them one by one",
                                   len(pending), type(err).__name__, err)
                    await self._one_by_one(pending)
                continue
            if self.on_batch:
                self.on_batch(len(items))
            offset = 0
            for request, future in pending:
                if not future.done():
                    future.set_result(rows[offset : offset + len(request)])
                offset += len(request)

    async def _one_by_one(self, pending: list) -> None:
        """Run each request of a failed batch on its own: only the requests that fail again get an error."""
        loop = asyncio.get_running_loop()
        for request, future in pending:
            if future.done():  # the client went away
                continue
            try:
                rows = await loop.run_in_executor(self.executor, self.fn, request)
            except Exception as err:
                if not future.done():
                    future.set_exception(err)
                continue
            if self.on_batch:
                self.on_batch(len(request))
            if not future.done():
                future.set_result(rows)
