"""Dynamic batching: tiles from concurrent requests share forward passes.

One `TileBatcher` owns one predictor and the single worker thread that calls it, so the model is
never entered concurrently and inference never runs on the event loop. Request threads call
`predict(tiles, session)` and block until their tiles come back; the worker packs queued tiles
(of the same shape) into batches of at most `max_batch_size`. A partial batch waits at most
`max_wait_ms` for more tiles, and not at all when every active session already has tiles in the
queue (nobody else could add any), so a lone request pays no batching delay.

The queue is bounded (`max_queue` tiles): a *new* session that finds it full gets `QueueFull`
at once (the server answers 503 + Retry-After); a session that already got tiles through waits
for room instead, so admitted requests finish and memory stays bounded by
`max_inflight x tiles per call`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Predictor = Callable[[np.ndarray], np.ndarray]


class QueueFull(RuntimeError):
    """The tile queue is full or the batcher is shutting down: retry later."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(QueueFull):
    """The request ran past its deadline (`request_timeout_seconds`): its remaining work is skipped."""

    code = "deadline_exceeded"


class ClientDisconnected(DeadlineExceeded):
    """The client closed the connection: nobody waits for the answer, so the remaining tiles are skipped."""

    code = "client_disconnected"


@dataclass(frozen=True)
class BatchStats:
    size: int  # tiles in the forward pass
    sessions: int  # distinct requests those tiles came from
    seconds: float  # predictor time


@dataclass(eq=False)
class Session:
    """One request's identity in the queue."""

    started: bool = False  # has had tiles accepted (then it waits for room instead of failing)
    context: Any = None  # the request's `tracing.RequestContext`: told about each forward pass its tiles were in


@dataclass(eq=False)
class _Job:
    tiles: np.ndarray
    session: Session
    out: np.ndarray | None = None
    remaining: int = 0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    enqueued_ns: int = 0  # wall clock (time.time_ns) when queued, for the trace's "queue wait" span


@dataclass(eq=False)
class _Entry:
    job: _Job
    index: int
    enqueued: float


class TileBatcher:
    """A predictor shared by many threads, with dynamic batching and a bounded queue."""

    def __init__(
        self, predictor: Predictor, *, max_batch_size: int = 8, max_wait_ms: float = 5.0, max_queue: int = 256,
        on_batch: Callable[[BatchStats], None] | None = None, name: str = "model",
    ) -> None:
        if max_batch_size < 1 or max_queue < max_batch_size:
            raise ValueError(f"max_batch_size {max_batch_size} / max_queue {max_queue}: need 1 <= batch <= queue")
        self.predictor = predictor
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: deque[_Entry] = deque()
        self._active: set[Session] = set()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"unetkit-batcher-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ request side

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @contextmanager
    def session(self, context: Any = None) -> Iterator[Session]:
        """Mark a request active for its whole duration, so partial batches wait for its tiles.
        `context`: the request's `RequestContext` (its trace hears of each forward pass), or None."""
        s = Session(context=context)
        with self._cond:
            self._active.add(s)
        try:
            yield s
        finally:
            with self._cond:
                self._active.discard(s)
                self._cond.notify_all()

    def predict(self, tiles: np.ndarray, session: Session | None = None) -> np.ndarray:
        """Outputs `(N, K, h, w)` for `tiles` `(N, C, h, w)`; blocks until done."""
        session = session or Session()
        n = len(tiles)
        if n > self.max_queue:
            raise ValueError(f"{n} tiles in one call exceed max_queue {self.max_queue}")
        job = _Job(tiles=np.ascontiguousarray(tiles, dtype=np.float32), session=session, remaining=n,
                   enqueued_ns=time.time_ns() if session.context is not None else 0)
        with self._cond:
            while True:
                if self._closed:
                    raise QueueFull("the server is shutting down")
                if len(self._queue) + n <= self.max_queue:
                    break
                if not session.started:
                    raise QueueFull(f"inference queue full ({len(self._queue)} of {self.max_queue} tiles waiting)")
                self._cond.wait(0.5)
            now = time.monotonic()
            self._queue.extend(_Entry(job, i, now) for i in range(n))
            session.started = True
            self._cond.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.out is not None
        return job.out

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new tiles, finish the queued ones, stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ------------------------------------------------------------ worker side

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return  # closed and drained
                self._wait_for_more()
                batch = self._take()
                self._cond.notify_all()  # room in the queue
            self._execute(batch)

    def _wait_for_more(self) -> None:
        deadline = self._queue[0].enqueued + self.max_wait
        while len(self._queue) < self.max_batch_size and not self._closed:
            queued = {e.job.session for e in self._queue}
            if self._active <= queued:
                return  # every active request already has tiles here: nobody else is coming
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _take(self) -> list[_Entry]:
        shape = self._queue[0].job.tiles.shape[1:]
        taken: list[_Entry] = []
        kept: list[_Entry] = []
        while self._queue and len(taken) < self.max_batch_size:
            entry = self._queue.popleft()
            (taken if entry.job.tiles.shape[1:] == shape else kept).append(entry)
        self._queue.extendleft(reversed(kept))
        return taken

    def _execute(self, batch: list[_Entry]) -> None:
        start_ns = time.time_ns()
        start = time.perf_counter()
        try:
            out = self.predictor(np.stack([e.job.tiles[e.index] for e in batch]))
            if len(out) != len(batch):
                raise ValueError(f"predictor returned {len(out)} outputs for {len(batch)} tiles")
        except BaseException as e:  # noqa: BLE001 - handed to the waiting requests; the worker lives on
            for job in {id(e.job): e.job for e in batch}.values():
                job.error = e
                job.done.set()
            return
        seconds = time.perf_counter() - start
        for entry, result in zip(batch, out, strict=True):
            job = entry.job
            if job.out is None:
                job.out = np.empty((len(job.tiles), *result.shape), dtype=np.float32)
            job.out[entry.index] = result
            job.remaining -= 1
            if job.remaining == 0 and job.error is None:
                job.done.set()
        sessions = {id(e.job.session): e.job.session for e in batch}
        if self.on_batch is not None:
            try:
                self.on_batch(BatchStats(len(batch), len(sessions), seconds))
            except Exception:  # noqa: BLE001 - metrics must never break inference
                pass
        if any(s.context is not None for s in sessions.values()):
            _report_batch(batch, sessions, start_ns, start_ns + int(seconds * 1e9))


def _report_batch(batch: list[_Entry], sessions: dict[int, Session], start_ns: int, end_ns: int) -> None:
    """Tell each traced request of the pass: when its tiles were queued, how many were in it, who shared it."""
    tiles: dict[int, int] = {}
    enqueued: dict[int, int] = {}
    for e in batch:
        key = id(e.job.session)
        tiles[key] = tiles.get(key, 0) + 1
        enqueued[key] = min(enqueued.get(key, e.job.enqueued_ns), e.job.enqueued_ns)
    contexts = {key: s.context for key, s in sessions.items() if s.context is not None}
    for key, context in contexts.items():
        try:
            context.batch(enqueued[key], start_ns, end_ns, len(batch), tiles[key],
                          [c for k, c in contexts.items() if k != key])
        except Exception:  # noqa: BLE001 - tracing must never break inference
            pass


class PixelBudget:
    """Bounds the pixels being decoded, segmented and encoded at once (memory is ~proportional).

    `hold(n)` waits in FIFO order (up to `timeout` seconds, then `QueueFull`) until `n` more pixels
    fit; first come, first served, so no request starves behind smaller ones. An image larger than
    the whole budget runs alone rather than never.
    """

    def __init__(self, pixels: int, timeout: float = 30.0) -> None:
        self.capacity, self.timeout = pixels, timeout
        self.used = 0
        self._waiting: deque[object] = deque()
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, n: int, deadline: float | None = None) -> Iterator[None]:
        """Wait for room for `n` pixels until `timeout` s from now or `deadline` (monotonic), whichever is first."""
        deadline = min(time.monotonic() + self.timeout, deadline or float("inf"))
        ticket = object()
        with self._cond:
            self._waiting.append(ticket)
            try:
                while self._waiting[0] is not ticket or (self.used and self.used + n > self.capacity):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise QueueFull(f"server busy: {self.used:,} pixels in progress (budget {self.capacity:,})")
                    self._cond.wait(remaining)
            finally:
                self._waiting.remove(ticket)
                self._cond.notify_all()  # the next in line may fit too
            self.used += n
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()
