"""Requests that arrive close together run as one batch: an asyncio queue and one worker task that runs the model
in a thread, so the event loop keeps accepting and decoding while the model works."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class _Job:
    item: Any
    future: asyncio.Future


class Stopped(RuntimeError):
    """The batcher is not running (not started yet, or shutting down)."""


class Batcher:
    """Collects submitted items for up to ``max_wait_s`` after the first one, or until ``max_batch`` are waiting, and
    calls ``run(items) -> results`` (one result per item, in order) on them in a worker thread. It waits only while
    some request is ``arriving`` (reading and decoding its upload): a lone request runs at once.

    One worker runs one batch at a time, so the model is never called from two threads at once. ``stop`` lets the
    queued items run before the worker ends: the server's graceful shutdown answers every request it accepted.
    """

    def __init__(self, run: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int, max_wait_s: float) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_s >= 0, got {max_batch} and {max_wait_s}")
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self.batches_run = 0
        self.items_run = 0
        self.largest_batch = 0
        self.waiting = 0  # submitted items not answered yet
        self.arriving_now = 0  # requests reading or decoding their upload
        self._queue: asyncio.Queue[_Job | None] | None = None
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._work())

    async def stop(self) -> None:
        """Run what is queued, then end the worker."""
        if self._queue is None or self._worker is None:
            return
        queue, worker = self._queue, self._worker
        self._queue = None  # no new items from here on
        await queue.put(None)
        await worker

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Marks a request that will submit an item once its upload is read and decoded: a batch waits for it."""
        self.arriving_now += 1
        try:
            yield
        finally:
            self.arriving_now -= 1

    async def submit(self, item: Any) -> Any:
        if self._queue is None:
            raise Stopped("the model worker is not running (the server is starting or shutting down)")
        future = asyncio.get_running_loop().create_future()
        self.waiting += 1
        try:
            await self._queue.put(_Job(item, future))
            return await future
        finally:
            self.waiting -= 1

    async def _work(self) -> None:
        queue = self._queue
        stopping = False
        while not stopping:
            first = await queue.get()
            if first is None:
                break
            batch, stopping = await self._gather(queue, first)
            batch = [job for job in batch if not job.future.done()]  # a client that left cancels its future
            if batch:
                await self._run(batch)

    async def _gather(self, queue: asyncio.Queue, first: _Job) -> tuple[list[_Job], bool]:
        """The jobs that join ``first`` within the wait; True once the stop marker was taken."""
        loop = asyncio.get_running_loop()
        batch, deadline = [first], loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                job = queue.get_nowait()  # already waiting: no need to wait for it
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0 or not self.arriving_now:  # nobody else on the way: waiting only adds latency
                    break
                try:
                    job = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    async def _run(self, batch: list[_Job]) -> None:
        try:
            results = await asyncio.to_thread(self.run, [job.item for job in batch])
        except Exception as error:  # each waiting request reports it; the worker goes on with the next batch
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        finally:
            self.batches_run += 1
            self.items_run += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
        for job, result in zip(batch, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)
