"""Time, injected: logic asks a clock instead of calling time.time(), so tests can jump."""

from __future__ import annotations

import time
from datetime import datetime, timezone


class SystemClock:
    def now(self) -> float:
        """Unix seconds."""
        return time.time()

    def utcnow(self) -> datetime:
        return datetime.fromtimestamp(self.now(), timezone.utc)


class FakeClock(SystemClock):
    """A clock that only moves when told to (for tests)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
