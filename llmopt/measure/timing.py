"""Wall-clock time around device work, read only after the device has finished what was queued."""

from __future__ import annotations

import time
from collections.abc import Callable


class SyncedTimer:
    """Wall-clock seconds around device work; `sync` is called before each clock read."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> SyncedTimer:
        self.sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sync()
        self.seconds = time.perf_counter() - self._start
