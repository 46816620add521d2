"""Progress bars on stderr (tqdm), silent when stderr is not a terminal or with --quiet."""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager


@contextmanager
def progress_bar(total: int, description: str, quiet: bool = False):
    """Yield a thread-safe `advance(nbytes)` callable; a no-op when quiet."""
    if quiet or not sys.stderr.isatty():
        yield lambda n: None
        return
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional: no bar rather than no tool
        yield lambda n: None
        return
    lock = threading.Lock()
    with tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
              file=sys.stderr, leave=False) as bar:
        def advance(n: int) -> None:
            with lock:
                bar.update(n)

        yield advance
