"""Processing in a process of its own, started and watched by `serve`, so that accepting and
processing each have a core (bench/RESULTS.md § Flows: at 500 events/s, webhooks arrived
within a p99 of 0.2 s this way, against 4.7–7.1 s with both in one process, same runs).

The child is `trackhouse process` with the end of a pipe: the API process writes a byte to
it where it would set one of an in-process Processor's events — after each log commit
(`wake`), when a test waits (`hurry`), when a webhook may be due (`deliveries_wake`) — and
the child sets that event of its Processor. The pipe closing (the API process gone, however
it went) stops the child, which finishes its batch first; it ignores SIGINT and SIGTERM, which
a terminal or a service manager sends the whole process group, so that it outlasts the API
process's own graceful stop. A child that dies is started again, with a growing pause while
it keeps dying young. A PostgreSQL URL reaches it in its environment, not its command line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from trackhouse.backends import Location

logger = logging.getLogger("trackhouse.process")

WAKE, HURRY, DELIVERIES = b"w", b"h", b"d"
STOP_SECONDS = 60.0  # for the child to finish its batch at shutdown, then it is killed
YOUNG_SECONDS = 30.0  # a child that dies younger than this is restarted after a growing pause


def cores() -> int:
    """The cores this process may run on (its affinity where the system has one, not the
    machine's count; a container's CPU quota is not looked at)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Signal:
    """One of the child Processor's events, as the API process sets it (a byte down the pipe;
    dropped when the pipe is full, since the child is awake then)."""

    def __init__(self, send: Callable[[bytes], None], code: bytes) -> None:
        self._send, self._code = send, code

    def set(self) -> None:
        self._send(self._code)


class ProcessorProcess:
    """What the API sees of a Processor in another process: its three events, and no error to
    report (the child logs its own)."""

    last_error: str | None = None

    def __init__(self, where: Location, claim_fd: int | None = None) -> None:
        self.command = [sys.executable, "-m", "trackhouse", "process"]
        self.env = dict(os.environ)
        if where.url:  # not in argv, where every local user could read its password
            self.env["TRACKHOUSE_STORE"] = where.url
        else:
            self.command += ["--data-dir", str(where.data_dir.resolve())]
        # The embedded store's processing claim, which serve holds for as long as it runs.
        self._claim = () if claim_fd is None else (claim_fd,)
        if claim_fd is not None:
            self.command += ["--claim-fd", str(claim_fd)]
        self.wake = Signal(self._send, WAKE)
        self.hurry = Signal(self._send, HURRY)
        self.deliveries_wake = Signal(self._send, DELIVERIES)
        self._child: subprocess.Popen[bytes] | None = None
        self._pipe = -1
        self._born = 0.0  # when the child was started (time.monotonic())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="processor-watch", daemon=True)

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    def start(self) -> None:
        self._spawn()
        self._watcher.start()

    def _spawn(self) -> None:
        read, write = os.pipe()
        os.set_blocking(write, False)
        command = [*self.command, "--signals-fd", str(read)]
        try:
            child = subprocess.Popen(command, pass_fds=(read, *self._claim), env=self.env)
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        with self._lock:
            stopped = self._stop.is_set()
            if not stopped:
                if self._pipe >= 0:
                    os.close(self._pipe)
                self._child, self._pipe, self._born = child, write, time.monotonic()
        if stopped:  # stopped meanwhile: the pipe closing stops this one too
            os.close(write)
            _wait(child)

    def _send(self, code: bytes) -> None:
        with self._lock:
            if self._pipe < 0:
                return
            # Full: the child has bytes to read, so it is awake. Gone: _watch starts another.
            with contextlib.suppress(BlockingIOError, BrokenPipeError):
                os.write(self._pipe, code)

    def _watch(self) -> None:
        pause = 0.5  # before the next restart; doubled while children die young
        while not self._stop.wait(0.5):
            child = self._child
            if child is None or child.poll() is None:
                continue
            young = time.monotonic() - self._born < YOUNG_SECONDS
            pause = min(pause * 2, 30.0) if young else 0.5
            logger.warning("the processor (pid %d) exited (%s); starting it again in %.1f s",
                           child.pid, child.returncode, pause)  # fmt: skip
            if self._stop.wait(pause):
                return
            try:
                self._spawn()
            except OSError:  # out of memory or descriptors, say: tried again after the pause
                logger.exception("the processor could not be started")

    def stop(self) -> None:
        """Close the pipe (the child finishes its batch and exits), wait for it."""
        self._stop.set()
        with self._lock:
            child, self._child = self._child, None
            if self._pipe >= 0:
                os.close(self._pipe)
                self._pipe = -1
        if child is not None:
            _wait(child)


def _wait(child: subprocess.Popen[bytes]) -> None:
    """For a child whose pipe is closed to finish its batch and exit; killed past STOP_SECONDS."""
    try:
        child.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        logger.warning("the processor (pid %d) did not stop; killing it", child.pid)
        child.kill()
        child.wait()


def follow_signals(fd: int, wake: threading.Event, hurry: threading.Event,
                   deliveries: threading.Event, stop: threading.Event) -> None:  # fmt: skip
    """In the child: set the Processor's events as the API process asks, until the pipe
    closes, which stops processing."""
    events = {WAKE[0]: wake, HURRY[0]: hurry, DELIVERIES[0]: deliveries}
    try:
        while chunk := os.read(fd, 4096):
            for code in set(chunk):
                if (event := events.get(code)) is not None:
                    event.set()
    finally:
        os.close(fd)
        stop.set()
        wake.set()
        hurry.set()
