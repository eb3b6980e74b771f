"""One thread that runs callbacks at deadlines: bounds how long a request may take to arrive.

A ``threading.Timer`` per request would start a thread per request; this
keeps one heap of deadlines. Used to cancel gRPC calls whose client sent
headers and then stalled (issue 16 item 3).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Watchdog"]

_log = logging.getLogger(__name__)


class Watchdog:
    """``arm(seconds, callback)`` → token; ``disarm(token)`` before it fires to cancel it."""

    def __init__(self, name: str) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._armed: set[int] = set()
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def arm(self, seconds: float, callback: Callable[[], None]) -> int:
        token = next(self._ids)
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + seconds, token, callback))
            self._armed.add(token)
            self._cond.notify()
        return token

    def disarm(self, token: int) -> bool:
        """True when the callback had not run (and now never will)."""
        with self._cond:
            if token in self._armed:
                self._armed.discard(token)
                return True
            return False

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    # Disarmed entries are dropped lazily here, in deadline order.
                    while self._heap and self._heap[0][1] not in self._armed:
                        heapq.heappop(self._heap)
                    if self._heap and self._heap[0][0] <= time.monotonic():
                        break
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, token, callback = heapq.heappop(self._heap)
                self._armed.discard(token)
            try:
                callback()
            except Exception:  # a callback's bug must not stop every later deadline
                _log.exception("watchdog callback failed")
