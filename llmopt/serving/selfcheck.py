"""Is the load generator, not the server, the bottleneck of a level? Three of its own measures say so.

- send lag: how late each request left against its schedule (open loop: its Poisson arrival time, less any wait
  for a slot under --max-inflight, which is the server's backlog and not the client's lag; closed loop: the end of
  the same user's previous request);
- event-loop lag: a probe sleeps 10 ms over and over on the loop that times the requests; how much longer each sleep
  took is time the loop was busy elsewhere (parsing chunks, writing records) and every timestamp could be that late;
- the client's CPU: the process's CPU time over the level's wall time, in cores (1.0 = one core fully used; asyncio
  runs on one core, so near 1.0 is a saturated client).
A level whose send-lag or loop-lag p99 is over the threshold, or whose client used at least `cpu_limit` cores, is
flagged `client_bound`: its latencies and rates say as much about the client as about the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from llmopt.measure.stats import percentile

PROBE_S = 0.010
LAG_THRESHOLD_MS = 10.0  # p99 send or loop lag beyond which a level is client-bound
CPU_LIMIT = 0.9  # cores

T = TypeVar("T")


@dataclass
class ClientWatch:
    loop_lag_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0

    async def run(self, work: Awaitable[T]) -> T:
        """Await `work` with the loop-lag probe running beside it, and the process's CPU time counted."""
        cpu0, wall0 = time.process_time(), time.perf_counter()
        probe = asyncio.create_task(self._probe())
        try:
            return await work
        finally:
            probe.cancel()
            self.cpu_s, self.wall_s = time.process_time() - cpu0, time.perf_counter() - wall0

    async def _probe(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(PROBE_S)
            self.loop_lag_s.append(max(0.0, time.perf_counter() - before - PROBE_S))


def _ms(values: Sequence[float]) -> dict[str, float | None]:
    return {q: (None if (v := percentile(values, n)) is None else 1000 * v) for q, n in (("p50", 50), ("p99", 99))} | {
        "max": 1000 * max(values) if values else None
    }


def figures(watch: ClientWatch, send_lags_s: Sequence[float], lag_threshold_ms: float = LAG_THRESHOLD_MS,
            cpu_limit: float = CPU_LIMIT, queue_waits_s: Sequence[float] = ()) -> dict[str, Any]:  # fmt: skip
    """The client's figures of one level and, where one of them crossed its limit, why it was client-bound. The wait
    for a slot under --max-inflight (open loop) is reported apart and never makes a level client-bound."""
    send, loop = _ms(send_lags_s), _ms(watch.loop_lag_s)
    cores = watch.cpu_s / watch.wall_s if watch.wall_s > 0 else None
    reasons = []
    if send["p99"] is not None and send["p99"] > lag_threshold_ms:
        reasons.append(f"send lag p99 {send['p99']:.1f} ms > {lag_threshold_ms:g} ms")
    if loop["p99"] is not None and loop["p99"] > lag_threshold_ms:
        reasons.append(f"event-loop lag p99 {loop['p99']:.1f} ms > {lag_threshold_ms:g} ms")
    if cores is not None and cores >= cpu_limit:
        reasons.append(f"client CPU {cores:.2f} cores >= {cpu_limit:g}")
    return {
        "send_lag_ms": send,
        "queue_wait_ms": _ms(queue_waits_s),
        "loop_lag_ms": loop,
        "client_cpu_cores": cores,
        "client_bound": "; ".join(reasons) or None,
    }
