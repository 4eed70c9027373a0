"""The two ways of loading a server: a closed loop of N users each waiting for its answer before the next request,
and an open loop of Poisson arrivals at a fixed rate that does not wait."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llmopt.serving.client import RequestResult, Target, send


@dataclass(frozen=True)
class Payload:
    id: str
    prompt: str
    prompt_tokens: int | None  # by the model's tokenizer, where one was given


@dataclass(frozen=True)
class Load:
    """How much to send at one level: `requests` measured ones (or for `duration_s`) after `warmup` unmeasured ones."""

    requests: int | None
    duration_s: float | None
    warmup: int
    max_tokens: int
    ignore_eos: bool


def measured_window(results: Sequence[RequestResult]) -> float:
    """From the first measured request's send to the last measured request's end (answer or error)."""
    measured = [r for r in results if not r.warmup]
    if not measured:
        return 0.0
    return max(r.start_s + r.elapsed_s for r in measured) - min(r.start_s for r in measured)


def _session(concurrency: int):
    import aiohttp

    # One connection per user at most: the pool must never be what limits the load.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency, force_close=False))


async def closed_loop(target: Target, payloads: Sequence[Payload], concurrency: int, load: Load,
                      on_result: Callable[[RequestResult], None], stop: Callable[[], bool]) -> list[RequestResult]:  # fmt: skip
    results: list[RequestResult] = []
    counter = itertools.count()
    total = None if load.requests is None else load.warmup + load.requests
    start = time.perf_counter()
    deadline = None if load.duration_s is None else start + load.duration_s

    async def user() -> None:
        ready = time.perf_counter()  # this user's schedule: send as soon as its previous answer ended
        while not stop():
            i = next(counter)
            if total is not None and i >= total:
                return
            if deadline is not None and i >= load.warmup and time.perf_counter() >= deadline:
                return
            payload = payloads[i % len(payloads)]
            result = await send(session, target, payload.id, payload.prompt, load.max_tokens, load.ignore_eos, start)
            result.late_s = max(0.0, result.start_s - (ready - start))
            ready = start + result.start_s + result.elapsed_s
            result.warmup = i < load.warmup
            results.append(result)
            on_result(result)

    async with _session(concurrency) as session:
        await asyncio.gather(*(user() for _ in range(concurrency)))
    return results


async def open_loop(target: Target, payloads: Sequence[Payload], rate: float, load: Load, seed: int, max_inflight: int,
                    on_result: Callable[[RequestResult], None], stop: Callable[[], bool]) -> list[RequestResult]:  # fmt: skip
    """Poisson arrivals at `rate` per second (exponential gaps, seeded). A request is sent at its arrival time whatever
    is still in flight, up to `max_inflight`; beyond that it waits, and its lateness is recorded."""
    rng = random.Random(seed)
    results: list[RequestResult] = []
    total = None if load.requests is None else load.warmup + load.requests
    gate = asyncio.Semaphore(max_inflight)
    start = time.perf_counter()

    async def one(i: int, payload: Payload, scheduled: float) -> None:
        async with gate:
            if stop():  # stopped (interrupt, over-saturation) while it waited for a free slot: never sent
                return
            result = await send(session, target, payload.id, payload.prompt, load.max_tokens, load.ignore_eos, start)
        result.warmup = i < load.warmup
        result.late_s = max(0.0, result.start_s - scheduled)
        results.append(result)
        on_result(result)

    tasks = []
    async with _session(max_inflight) as session:
        arrival = 0.0
        for i in itertools.count():
            if stop() or (total is not None and i >= total):
                break
            arrival += rng.expovariate(rate)
            if load.duration_s is not None and i >= load.warmup and arrival > load.duration_s:
                break
            await asyncio.sleep(max(0.0, start + arrival - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i, payloads[i % len(payloads)], arrival)))
        await asyncio.gather(*tasks)
    return results
