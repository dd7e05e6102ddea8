"""One asyncio event loop in one thread for every dial-out connection of the process.

A thread per connection (and ``select()``, which fails past 1024 descriptors) does not
scale to hundreds of streams; an epoll-backed asyncio loop does. Only work that cannot run
on a loop without blocking it goes to a small bounded ``ThreadPoolExecutor``: the TCP
connect, the TLS handshake and the HTTP upgrade (websocket-client's handshake is blocking),
and token requests (``requests``). Its workers are started up front, so the process has the
same threads with 1 session as with 1000: the loop thread, ``EXECUTOR_WORKERS`` workers.

Everything the loop runs must return quickly: a callback that blocks delays every session.

Reading comes before processing (``defer``): a message's arrival time is stamped as its
socket is read, so a shell reads and stamps what every readable socket holds, and the
processing of those messages (each stream's pipeline) runs after, in order.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from ..errors import ConfigError

__all__ = ["EXECUTOR_WORKERS", "IOLoop"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

EXECUTOR_WORKERS = 4
"""Blocking jobs (handshakes, token requests) running at once. Each takes a few ms on a
healthy network, so 4 connect hundreds of sessions a second; a job stuck on a dead host ties
up one worker until its own timeout, and the others go on."""

_YIELD_EVERY = 8
"""Deferred callbacks run between two looks for a readable socket (a ``select`` that does
not wait, ~2 us): about a millisecond of pipeline work at most before a waiting message is
read and stamped."""

_BACKLOG = 256
"""Deferred callbacks beyond which the readers wait: past it a loop that cannot keep up
reads only as fast as it processes (and TCP slows the senders) instead of queueing
without end; at ~100 us a message, the most a stamp can then lead its processing by is
~25 ms."""

_START_TIMEOUT_S = 5.0
_STOP_TIMEOUT_S = 5.0


class IOLoop:
    """An asyncio loop in the daemon thread ``jitterline-io`` plus a bounded executor.

    Start it with ``start()`` or ``with IOLoop() as loop:``; ``IOLoop.shared()`` is the
    process-wide instance, started on first use and stopped at interpreter exit.
    """

    _shared: IOLoop | None = None
    _shared_lock = threading.Lock()

    def __init__(self, *, name: str = "jitterline-io", workers: int = EXECUTOR_WORKERS) -> None:
        if workers < 1:
            raise ConfigError(f"workers={workers} must be at least 1; try {EXECUTOR_WORKERS}")
        self.name = name
        self.workers = workers
        self._selector = selectors.DefaultSelector()  # the loop's; ``defer`` looks at it too
        self._loop = asyncio.SelectorEventLoop(self._selector)
        self._deferred: deque[tuple[Callable[..., object], tuple[object, ...]]] = deque()
        self._gave_way = False
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=f"{name}-worker"
        )
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._workers: list[threading.Thread] = []
        self._state = "new"
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"IOLoop({self.name!r}, {self._state}, workers={self.workers})"

    @classmethod
    def shared(cls) -> IOLoop:
        """The process-wide loop: started on first call, stopped at exit."""
        with cls._shared_lock:
            if cls._shared is None or cls._shared._state == "stopped":
                loop = cls()
                loop.start()
                atexit.register(loop.stop)
                cls._shared = loop
            return cls._shared

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        return self._executor

    @property
    def running(self) -> bool:
        return self._state == "running"

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def start(self) -> IOLoop:
        with self._lock:
            if self._state != "new":
                raise ConfigError(f"{self!r} starts once; create a new IOLoop")
            self._state = "running"
        self._loop.set_default_executor(self._executor)
        self._thread.start()
        self._start_workers()
        return self

    def stop(self) -> None:
        """Stop the loop and the executor, joining their threads for up to 5 s; safe to
        call twice, and from a callback (nothing is joined then). A job still running (a
        handshake to a dead host) keeps its worker until its own timeout; its result goes
        nowhere."""
        with self._lock:
            if self._state != "running":
                self._state = "stopped"
                return
            self._state = "stopped"
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.in_loop_thread():
            return
        deadline_s = time.monotonic() + _STOP_TIMEOUT_S
        for thread in [self._thread, *self._workers]:  # idle workers exit at once
            thread.join(max(0.0, deadline_s - time.monotonic()))
            if thread.is_alive():
                logger.warning("%s: thread %s still busy after stop()", self.name, thread.name)

    def __enter__(self) -> IOLoop:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: object) -> None:
        """Run ``callback(*args)`` on the loop thread; ignored once the loop stopped."""
        if self._state != "running":
            return
        with contextlib.suppress(RuntimeError):  # closed between the check and the call
            self._loop.call_soon_threadsafe(callback, *args)

    def call_soon(self, callback: Callable[..., object], *args: object) -> None:
        """``call_soon_threadsafe`` that, called on the loop thread, skips the wake-up:
        the loop is running this very caller, and the self-pipe write and the read back
        that the thread-safe form pays each time (two syscalls and a loop turn) buy
        nothing there."""
        if not self.in_loop_thread():
            self.call_soon_threadsafe(callback, *args)
        elif self._state == "running":  # ignored once stopped, as the thread-safe form
            self._loop.call_soon(callback, *args)

    def defer(self, callback: Callable[..., object], *args: object) -> None:
        """Run ``callback(*args)`` on the loop thread after the sockets readable now have
        been read; call it on the loop thread.

        A message's arrival time is stamped as its socket is read. Processed inline, each
        message (its stream's whole pipeline, ~100 us) would hold back the reading, and
        the stamps, of every socket behind it in the same wake-up: with 100 streams whose
        frames come together, the last stamps came ~12 ms late, and each stream measured
        that as network jitter (a p99 of 21 ms on loopback, where the network adds none).
        So the shells read and stamp first and defer the processing here. Deferred
        callbacks run in the order given, and give way to the readers every
        ``_YIELD_EVERY`` callbacks while a socket is readable, unless ``_BACKLOG`` of them
        wait. One that raises is logged and costs only itself.
        """
        deferred = self._deferred
        if not deferred:
            self._loop.call_soon(self._run_deferred)
        deferred.append((callback, args))

    def run_deferred(self) -> None:
        """Run every deferred callback now, in order: for what must come after them (a
        connection's end after its last messages)."""
        deferred = self._deferred
        while deferred:
            callback, args = deferred.popleft()
            self._call(callback, args)

    def _run_deferred(self) -> None:
        deferred = self._deferred
        # Look for readable sockets before the first callback too (sockets that became
        # readable since this run was queued are queued behind it), unless this run is
        # the one that gave way: it then runs a round first, so that work goes on.
        ran = 0 if self._gave_way else _YIELD_EVERY
        self._gave_way = False
        while deferred:
            if ran == _YIELD_EVERY:
                if len(deferred) < _BACKLOG and self._readable():
                    # The loop queues the readers at its next turn, behind anything already
                    # queued: come back one turn later, behind them.
                    self._gave_way = True
                    self._loop.call_soon(self._loop.call_soon, self._run_deferred)
                    return
                ran = 0
            callback, args = deferred.popleft()
            ran += 1
            self._call(callback, args)

    def _readable(self) -> bool:
        """Whether a socket (or the loop's wake-up pipe) has something to read now;
        level-triggered, so the loop's own ``select`` sees the same."""
        return any(events & selectors.EVENT_READ for _, events in self._selector.select(0))

    @staticmethod
    def _call(callback: Callable[..., object], args: tuple[object, ...]) -> None:
        try:
            callback(*args)
        except Exception:
            logger.exception("a deferred callback failed: %r", callback)

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop from any thread; its result comes in the future."""
        if self._state != "running":
            coro.close()
            raise ConfigError(f"{self!r} is not running; start() it first")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._cancel_leftovers()
            self._loop.close()

    def _cancel_leftovers(self) -> None:
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        if tasks:
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

    def _start_workers(self) -> None:
        """Start every executor worker now: a pool that grows on demand would add threads
        while sessions connect, and the thread count would depend on the load."""
        barrier = threading.Barrier(self.workers, timeout=_START_TIMEOUT_S)

        def meet() -> threading.Thread:
            barrier.wait()
            return threading.current_thread()

        jobs = [self._executor.submit(meet) for _ in range(self.workers)]
        done, _ = concurrent.futures.wait(jobs, _START_TIMEOUT_S)
        self._workers = [job.result() for job in done if job.exception() is None]
