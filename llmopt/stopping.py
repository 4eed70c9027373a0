"""A stop asked for from outside a long job (Ctrl-C, SIGTERM from a sweep's timeout or a scheduler).

The command line owns the signal handlers; the libraries only see a `StopRequest`. A handler sets the request and,
unless the job is inside a shielded section, also raises KeyboardInterrupt so that a long generate call is abandoned
at once. Bookkeeping that must not be cut half-way (appending records, writing the summary) runs shielded: the
stop is only noted there, and the job checks `requested` right after.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StopRequest:
    def __init__(self) -> None:
        self._event = threading.Event()
        self._shields = 0

    def request(self) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    @property
    def may_interrupt(self) -> bool:
        """Whether a signal handler may raise KeyboardInterrupt now (not inside a shielded section)."""
        return self._shields == 0

    @contextmanager
    def shielded(self) -> Iterator[None]:
        self._shields += 1
        try:
            yield
        finally:
            self._shields -= 1
