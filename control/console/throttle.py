"""Login throttling: failed attempts counted per account/user and per client address.

A key (``"user:ACCOUNT/USER"`` or ``"addr:1.2.3.4"``) is locked once it has ``limit``
failures within ``window`` seconds, until the oldest of them leaves the window. A
successful login clears its user key (not the address: one address guessing many users
stays limited). Counting is in memory, per control process: a restart forgets it, which
costs an attacker a restart they cannot cause.

Time is injected (``clock.now()``), so tests can jump it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class Throttle:
    clock: object
    limit: int
    window: float
    _failures: dict[str, deque] = field(default_factory=dict)

    def _recent(self, key: str) -> deque:
        now = self.clock.now()
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and now - times[0] >= self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, key: str) -> float:
        """0 if the key may try now, else seconds until it may."""
        times = self._recent(key)
        if len(times) < self.limit:
            return 0.0
        return max(1.0, self.window - (self.clock.now() - times[-self.limit]))

    def failed(self, key: str) -> None:
        self._recent(key)
        self._failures.setdefault(key, deque()).append(self.clock.now())
        if len(self._failures) > 100_000:  # bound memory under a spray of addresses
            oldest = next(iter(self._failures))
            del self._failures[oldest]

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
