"""A bounded hand-off between two pipeline threads that either side can cancel.

Shared by the bundle reader's stages and the image cache's chunking stage: each thread
blocks at most 0.1 s at a time, so a cancelled pipeline unwinds promptly instead of
leaving a thread stuck on a full or empty queue.
"""

from __future__ import annotations

import queue
import threading


class Pipe:
    def __init__(self, depth: int = 8, *, error: type[BaseException]) -> None:
        """error: the exception put/get raise once the pipe is cancelled."""
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.cancelled = threading.Event()
        self._error = error

    def put(self, item) -> None:
        while True:
            if self.cancelled.is_set():
                raise self._error()
            try:
                self.q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self):
        while True:
            if self.cancelled.is_set():
                raise self._error()
            try:
                return self.q.get(timeout=0.1)
            except queue.Empty:
                continue
