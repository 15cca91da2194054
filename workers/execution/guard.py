"""Watching one attempt while it runs: the lease heartbeat, the timeout, and the stop.

A stop (the run was cancelled, timed out, its lease was lost, or the worker is shutting down
and its drain time is over) escalates in three steps:

1. the cooperative flag is raised at once (``ctx.cancelled``; a command gets SIGTERM);
2. after ``grace`` seconds, ``RunInterrupted`` is raised inside the task's thread: a signal
   when the task runs on the main thread (it also cuts a blocking ``time.sleep``), else an
   asynchronous exception, which lands at the task's next Python instruction;
3. after ``2 * grace`` seconds, the guard records the outcome itself and, in a prefork pool
   process, kills that process; the pool replaces it and the worker keeps serving.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from types import FrameType

from runs.domain.runs import Lease
from runs.services.transient import TRANSIENT_ERRORS
from workers.definitions.errors import RunInterrupted

log = logging.getLogger(__name__)

_INTERRUPT_SIGNAL = signal.SIGUSR2


class StopReason(StrEnum):
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    LOST = "lost"  # the lease could not be renewed: the run is no longer this attempt's
    DRAIN = "drain"  # the worker is shutting down: the attempt hands its run back


_in_pool_process = False
_drain_requested = False


def request_drain(*_: object) -> None:
    """Stop every attempt of this process, to hand its run back (the worker shuts down and its
    drain time is over). Safe in a signal handler: it sets a flag the guards' thread reads."""
    global _drain_requested
    _drain_requested = True


def drain_requested() -> bool:
    """Whether this process was asked to stop its attempts (``request_drain``)."""
    return _drain_requested


def mark_pool_process() -> None:
    """Called in each prefork pool process: the last resort of a stop may kill it."""
    global _in_pool_process
    _in_pool_process = True


class Interrupter:
    """Raises ``RunInterrupted`` once in the thread running a task, and only while armed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed = False
        self._fired = False
        self._ident = 0
        self._on_main = False

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        global _main_interrupter
        on_main = threading.current_thread() is threading.main_thread()
        if on_main:
            _install_signal_handler()
            _main_interrupter = self
        with self._lock:
            self._ident, self._on_main, self._armed = threading.get_ident(), on_main, True
        try:
            yield
        finally:
            try:
                with self._lock:
                    self._armed = False
                    if not on_main:  # drop an exception fired but not yet raised
                        _set_async_exc(self._ident, None)
            finally:
                self._armed = False

    def fire(self) -> bool:
        with self._lock:
            if not self._armed or self._fired:
                return False
            self._fired = True
            if self._on_main:
                signal.pthread_kill(self._ident, _INTERRUPT_SIGNAL)
            else:
                _set_async_exc(self._ident, RunInterrupted)
            return True


_main_interrupter: Interrupter | None = None
_handler_installed = False


def _on_interrupt_signal(signum: int, frame: FrameType | None) -> None:
    current = _main_interrupter
    if current is not None and current._armed:
        raise RunInterrupted("the worker stopped this run")


def _install_signal_handler() -> None:
    global _handler_installed
    if not _handler_installed:
        signal.signal(_INTERRUPT_SIGNAL, _on_interrupt_signal)
        _handler_installed = True


def _set_async_exc(ident: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc) if exc is not None else None
    )


class AttemptGuard:
    """Watches one attempt: renews its lease every third of the lease, raises the flag at the
    timeout, and escalates a stop as the module docstring says. The guards of a process are
    ticked by one shared thread (``_Ticker``), not a thread each."""

    def __init__(
        self,
        *,
        flag: threading.Event,
        renew: Callable[[], Lease],
        lease_seconds: float,
        timeout_seconds: float,
        grace_seconds: float,
        interrupter: Interrupter | None,
        abandon: Callable[[StopReason], None],
    ) -> None:
        self.reason: StopReason | None = None
        self._flag = flag
        self._renew = renew
        self._lease = lease_seconds
        self._timeout = timeout_seconds
        self._grace = grace_seconds
        self._interrupter = interrupter
        self._abandon = abandon
        self._returned = threading.Event()
        self._started = 0.0
        self._next_renewal = 0.0
        self._stop_at: float | None = None
        self._step = 0
        self._context = contextvars.Context()

    def __enter__(self) -> AttemptGuard:
        # The ticker thread ticks this guard in the attempt's context: what it logs (and what
        # a stuck attempt's abandon logs) carries the run's fields (runs/observability/json_logs.py).
        self._context = contextvars.copy_context()
        self._started = time.monotonic()
        self._next_renewal = self._started + self._lease / 3
        _ticker().add(self)
        return self

    def __exit__(self, *_: object) -> None:
        _ticker().remove(self)

    def returned(self) -> None:
        """The task's code has returned: no timeout or escalation from now on."""
        self._returned.set()

    def tick(self, now: float) -> None:
        self._context.run(self._tick, now)

    def _tick(self, now: float) -> None:
        if now >= self._next_renewal:
            self._next_renewal = now + self._lease / 3
            lease = self._renewed()
            if lease is not Lease.HELD and self.reason is None:
                stopping = lease is Lease.STOPPING
                self.reason = StopReason.CANCELLED if stopping else StopReason.LOST
                self._flag.set()
        if self._returned.is_set():
            return
        if self.reason is None and _drain_requested:
            self.reason = StopReason.DRAIN
            self._flag.set()
        if self.reason is None and now - self._started >= self._timeout:
            self.reason = StopReason.TIMEOUT
            self._flag.set()
        if self._stop_at is None and self._flag.is_set():
            self._stop_at = now
            self.reason = self.reason or StopReason.CANCELLED
        if self._stop_at is None:
            return
        if self._step == 0 and now >= self._stop_at + self._grace:
            self._step = 1
            if self._interrupter is not None and self._interrupter.fire():
                log.warning("interrupted a task that did not stop (%s)", self.reason)
        elif self._step == 1 and now >= self._stop_at + 2 * self._grace:
            self._step = 2
            self._give_up()

    def _renewed(self) -> Lease:
        try:
            return self._renew()
        except TRANSIENT_ERRORS:  # storage briefly away: the lease still has two thirds to run
            log.warning("could not renew a lease", exc_info=True)
            return Lease.HELD

    def _give_up(self) -> None:
        reason = self.reason or StopReason.CANCELLED
        try:
            self._abandon(reason)
        except Exception:
            log.exception("could not record the outcome of a stuck attempt")
        if self._returned.is_set():
            return
        if _in_pool_process:
            log.error(
                "a task ignored its stop (%s) for %.1f s: killing its pool process",
                reason,
                2 * self._grace,
            )
            os.kill(os.getpid(), signal.SIGKILL)
            return
        log.error(
            "a task ignored its stop (%s) and cannot be killed outside a prefork pool "
            "process; it keeps running, but its outcome is recorded",
            reason,
        )


class _Ticker:
    """The thread of a process that ticks the guards of its running attempts."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._guards: set[AttemptGuard] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, guard: AttemptGuard) -> None:
        with self._lock:
            self._guards.add(guard)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="runs-attempt-guards", daemon=True
                )
                self._thread.start()

    def remove(self, guard: AttemptGuard) -> None:
        with self._lock:
            self._guards.discard(guard)

    def _loop(self) -> None:
        while True:
            time.sleep(self._interval)
            with self._lock:
                guards = list(self._guards)
            now = time.monotonic()
            for guard in guards:
                try:
                    guard.tick(now)
                except Exception:  # one guard's failure must not stop the others'
                    log.exception("an attempt guard failed")


_tickers: dict[int, _Ticker] = {}
_tickers_lock = threading.Lock()
TICK_SECONDS = 0.1


def _ticker() -> _Ticker:
    """The ticker of this process (a forked pool process starts its own)."""
    pid = os.getpid()
    ticker = _tickers.get(pid)
    if ticker is None:
        with _tickers_lock:
            ticker = _tickers.setdefault(pid, _Ticker(TICK_SECONDS))
    return ticker
