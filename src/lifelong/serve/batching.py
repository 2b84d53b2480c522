"""Micro-batching: concurrent requests coalesced into one forward pass, like Triton's dynamic batching.

A request submits a job and awaits its result. One collector task waits until a worker thread is free,
takes the first waiting job, then keeps collecting jobs until ``max_batch`` are in hand or ``max_delay``
has passed since the first, and hands the whole batch to the free worker: one call of ``run`` on a thread
(the model's forward pass never blocks the event loop). With ``workers > 1`` several batches run at once
(e.g. one per core, each forward pass on one intra-op thread: on a shared machine one pass spread over two
OpenMP threads can be much slower than two passes side by side). Jobs that arrive while a batch runs wait for the next one, so under load the batches fill up by
themselves; an idle server adds at most ``max_delay`` to a lone request.

Example:
    >>> import asyncio
    >>> async def main():
    ...     batcher = MicroBatcher(lambda jobs: [2 * j for j in jobs], max_batch=8, max_delay_s=0.01)
    ...     batcher.start()
    ...     results = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
    ...     await batcher.stop()
    ...     return results, batcher.batches
    >>> asyncio.run(main())
    ([0, 2, 4, 6, 8], [5])
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any, Callable, Sequence


class MicroBatcher:
    """Coalesce concurrent jobs into batches.

    Args:
        run: ``jobs -> results`` (one result per job, in order; an exception instance as a job's result
            fails that job alone; an exception raised fails the whole batch).
        max_batch: most jobs per batch.
        max_delay_s: longest wait for more jobs after the first one of a batch.
        on_batch: called with each batch's size (metrics).
        workers: batches that may run at the same time (each on its own thread).

    Attributes:
        batches: the sizes of the last batches run (at most 1,000 kept).
    """

    def __init__(self, run: Callable[[Sequence[Any]], list[Any]], max_batch: int = 32, max_delay_s: float = 0.002,
                 on_batch: Callable[[int], None] | None = None, workers: int = 1) -> None:
        if max_batch < 1 or max_delay_s < 0 or workers < 1:
            raise ValueError(f"max_batch and workers must be at least 1 and max_delay non-negative, got {max_batch}, "
                             f"{workers}, {max_delay_s}")
        self.run, self.max_batch, self.max_delay_s, self.on_batch = run, max_batch, max_delay_s, on_batch
        self.workers = workers
        self.batches: list[int] = []
        self._queue: asyncio.Queue | None = None
        self._tasks: set[asyncio.Task] = set()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lifelong-batch")

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._free = asyncio.Semaphore(self.workers)
        self._tasks = {asyncio.get_running_loop().create_task(self._loop())}

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = set()
        self._executor.shutdown(wait=False)

    async def submit(self, job: Any) -> Any:
        """The result of ``job``, computed in a batch with the jobs that arrive with it."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((job, future))
        return await future

    async def _loop(self) -> None:
        queue = self._queue
        while True:
            await self._free.acquire()  # a worker is free: the next batch forms while the others compute
            pending = [await queue.get()]
            deadline = time.monotonic() + self.max_delay_s
            while len(pending) < self.max_batch:
                try:
                    pending.append(queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    pending.append(await asyncio.wait_for(queue.get(), left))
                except asyncio.TimeoutError:
                    break
            pending = [(job, future) for job, future in pending if not future.cancelled()]
            if not pending:
                self._free.release()
                continue
            self.batches = (self.batches + [len(pending)])[-1000:]
            if self.on_batch is not None:
                self.on_batch(len(pending))
            task = asyncio.get_running_loop().create_task(self._compute(pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _compute(self, pending: list) -> None:
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.run, [job for job, _ in pending])
        except Exception as error:  # the whole batch failed: every caller gets the error
            for _, future in pending:
                if not future.done():
                    future.set_exception(error)
            return
        finally:
            self._free.release()
        for (_, future), result in zip(pending, results):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
