"""Over-saturation: a level whose queue only grows is stopped, since waiting longer measures only the queue.

Two signs, whichever comes first: the server's waiting-requests gauge, or the client's send lag (an open loop's
requests leaving ever later against their schedule). Over the last `window_s` seconds of the series the least-squares
slope is above `min_slope` per second, every value in the last quarter of the window is at or above every value in its
first quarter (it never drained back; quarters, not halves, so that the jitter of neighbouring points at the middle
cannot hide a steady rise), and it has grown by at least `min_rise` overall. The first
`settle_s` seconds of a level are left out (a queue fills at the start of every level, then steadies).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Rule:
    window_s: float = 8.0
    settle_s: float = 2.0
    min_points: int = 6
    waiting_slope: float = 0.5  # requests per second
    waiting_rise: float = 4.0  # requests
    lag_slope: float = 0.05  # seconds of lag per second
    lag_rise: float = 0.5  # seconds


def slope(points: Sequence[tuple[float, float]]) -> float:
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / var if var > 0 else 0.0


def growing(points: Sequence[tuple[float, float]], rule: Rule, min_slope: float, min_rise: float) -> float | None:
    """The slope, when `points` (time, value) show a queue that only grows over the rule's window; else None."""
    if not points:
        return None
    end = max(t for t, _ in points)  # send lags come as requests finish, not quite in order
    recent = sorted((t, v) for t, v in points if t >= rule.settle_s and t >= end - rule.window_s)
    if len(recent) < rule.min_points or recent[-1][0] - recent[0][0] < rule.window_s * 0.75:
        return None
    quarter = max(1, len(recent) // 4)
    first, last = [v for _, v in recent[:quarter]], [v for _, v in recent[-quarter:]]
    s = slope(recent)
    if s > min_slope and min(last) >= max(first) and recent[-1][1] - recent[0][1] >= min_rise:
        return s
    return None


@dataclass
class Watch:
    """Fed from the scraper's thread (waiting requests) and the event loop (send lags); `reason` once tripped."""

    rule: Rule = field(default_factory=Rule)
    waiting: list[tuple[float, float]] = field(default_factory=list)
    lags: list[tuple[float, float]] = field(default_factory=list)
    reason: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _checked_at: float = float("-inf")

    def on_waiting(self, t: float, value: float) -> None:
        with self._lock:
            self.waiting.append((t, value))
            s = growing(self.waiting, self.rule, self.rule.waiting_slope, self.rule.waiting_rise)
            if s is not None and self.reason is None:
                self.reason = (
                    f"over-saturated at {t:.0f} s: the server's waiting requests rose without a dip for "
                    f"{self.rule.window_s:g} s (+{s:.1f}/s, now {value:g})"
                )

    def on_send(self, t: float, lag_s: float) -> None:
        with self._lock:
            self.lags.append((t, lag_s))
            # Judged twice a second at most, over the window only: a fast level has thousands of requests.
            if t - self._checked_at < 0.5:
                return
            self._checked_at = t
            self.lags = [(u, v) for u, v in self.lags if u >= t - 2 * self.rule.window_s]
            s = growing(self.lags, self.rule, self.rule.lag_slope, self.rule.lag_rise)
            if s is not None and self.reason is None:
                self.reason = (
                    f"over-saturated at {t:.0f} s: requests left ever later against their schedule for "
                    f"{self.rule.window_s:g} s (+{1000 * s:.0f} ms/s, now {lag_s:.2f} s late)"
                )
