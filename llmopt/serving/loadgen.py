"""The ways of loading a server: a closed loop of N users each waiting for its answer before the next request, and
an open loop of arrivals on a schedule (Poisson or gamma gaps at a rate, with a ramp-up, or a trace's timestamps)
that does not wait. A job is one request, or with `turns` > 1 one conversation.

Every level ends on its own terms: its request count, its duration (requests still running `grace_s` after it are
cut off and left out), a stop (over-saturation: what is in flight finishes; an interrupt: what is in flight is
cancelled), or the server going away (every user refused, or /health failing), which ends the level within seconds
and says when and how. An open loop's arrival that came due but was never sent (it waited for a slot under
`max_inflight` when the level ended) is a record all the same, `not_sent` with why, and counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmopt.serving.client import RequestResult, Target, send


@dataclass(frozen=True)
class Payload:
    id: str
    prompt: str
    prompt_tokens: int | None  # by the model's tokenizer, where one was given
    max_tokens: int | None = None  # a trace row's output length; None: the level's
    document: str | None = None  # the dataset document the prompt was made from
    prefix_group: int | None = None  # which shared prefix starts the prompt, if one does


class Payloads:
    """The prompts of a test, handed out in order across all its levels: a dataset's payloads each once, then again
    from the start (`repeated` counts the requests that got a prompt already sent), or prompts made by `make(k)`
    (unique: synthetic). With `prefixes`, the k-th request's prompt starts with prefix k mod K.

    Made prompts are never made on the timing loop (a long one takes tens of milliseconds, a stall that would land
    on every request in flight): `prepare(n)` makes them before the clock starts, and where a level's need is not
    known beforehand (a closed loop for a duration), `making_ahead(reserve)` keeps that many ready from a thread of
    its own while the level runs. A level that takes a prompt none of them had ready waits for one, made off the
    loop (`made_late` counts them: that wait is the client's send lag)."""

    def __init__(self, name: str, items: Sequence[Payload] = (), make: Callable[[int], Payload] | None = None,
                 prefixes: Sequence[str] = ()) -> None:  # fmt: skip
        self.name = name
        self.items = list(items)
        self.make = make
        self.prefixes = list(prefixes)
        self.sent = 0
        self.repeated = 0
        self.made_late = 0
        self._ready: deque[Payload] = deque()
        self._next_key = 0  # the key of the next prompt to make
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.items)

    def _make_one(self) -> Payload:
        assert self.make is not None
        with self._lock:
            k, self._next_key = self._next_key, self._next_key + 1
        return self.make(k)

    def prepare(self, n: int, stop: Callable[[], Any] | None = None) -> None:
        """Have n prompts ready before the clock starts (made prompts only; a dataset's are ready); `stop` (an
        interrupt) ends the making early."""
        if self.make is not None:
            while len(self._ready) < n and not (stop and stop()):
                self._ready.append(self._make_one())

    @contextlib.contextmanager
    def making_ahead(self, reserve: int) -> Iterator[None]:
        """Keep `reserve` prompts ready from a thread while the block runs (made prompts only; none for 0)."""
        if self.make is None or reserve <= 0:
            yield
            return
        self.prepare(reserve)
        done = threading.Event()

        def keep_ready() -> None:
            while not done.is_set():
                if len(self._ready) < reserve:
                    self._ready.append(self._make_one())
                else:
                    done.wait(0.05)

        maker = threading.Thread(target=keep_ready, name="prompt-maker", daemon=True)
        maker.start()
        try:
            yield
        finally:
            done.set()
            maker.join()

    def _hand_out(self, payload: Payload | None) -> Payload:
        k = self.sent
        self.sent += 1
        if payload is None:
            payload = self.items[k % len(self.items)]
            if k >= len(self.items):
                self.repeated += 1
        if self.prefixes:
            group = k % len(self.prefixes)
            payload = Payload(f"{payload.id}+g{group}", self.prefixes[group] + payload.prompt, None, payload.max_tokens,
                              payload.document, group)  # fmt: skip
        return payload

    def next(self) -> Payload:
        """The next prompt, made here if none is ready (outside a level's clock only)."""
        if self.make is None:
            return self._hand_out(None)
        return self._hand_out(self._ready.popleft() if self._ready else self._make_one())

    async def take(self) -> Payload:
        """The next prompt, on the timing loop: a ready one, or one made on a worker thread meanwhile."""
        if self.make is None:
            return self._hand_out(None)
        try:
            made = self._ready.popleft()
        except IndexError:
            self.made_late += 1
            made = await asyncio.to_thread(self._make_one)
        return self._hand_out(made)


@dataclass(frozen=True)
class Load:
    """How much to send at one level: `requests` measured jobs (or for `duration_s`) after `warmup` unmeasured ones."""

    requests: int | None
    duration_s: float | None
    warmup: int
    max_tokens: int
    ignore_eos: bool
    turns: int = 1  # requests per conversation; each turn sends the history and the server's previous answers
    think_time_s: float = 0.0  # between a conversation's turns
    grace_s: float = 30.0  # after --duration: requests still running then are cut off
    collect_text: bool = False  # keep every answer's text on its result (quality under load)


@dataclass
class ServerGone:
    """When (seconds into the level, and the wall clock) and how the server went away."""

    at_s: float
    utc: str
    how: str


def _utc_now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


HEALTH_EVERY_S = 0.5
HEALTH_TIMEOUT_S = 3.0  # a busy server's /health may take a second or two: slow is not gone
HEALTH_DEAD_S = 8.0  # a /health failing (no answer, a 5xx) without a success for this long: gone
HEALTH_REFUSED = 2  # /health's connection refused this many times in a row: the port is closed, gone


Stop = Callable[[], str | None]  # why a level must send no more (over-saturated, interrupted), or None


def never_abort() -> bool:
    return False


@dataclass
class _Level:
    """What the requests of one level share: their clock, their sink, and how the level ends. `stop` says why no
    more may be sent; `abort` (an interrupt) also cancels what is in flight."""

    target: Target
    load: Load
    users: int
    on_result: Callable[[RequestResult], None]
    stop: Stop
    abort: Callable[[], bool] = never_abort
    start: float = field(default_factory=time.perf_counter)
    results: list[RequestResult] = field(default_factory=list)
    gone: ServerGone | None = None
    refused_in_a_row: int = 0
    first_refused_at: float = 0.0
    cancel_kind: str = "cut_off"
    session: Any = None

    @property
    def deadline(self) -> float | None:
        return None if self.load.duration_s is None else self.start + self.load.duration_s

    def over(self) -> bool:
        return self.gone is not None or bool(self.stop())

    def why_over(self) -> str:
        if self.gone is not None:
            return "the server went away"
        return self.stop() or ("the level's duration and grace were over" if self.cancel_kind == "cut_off" else self.cancel_kind)

    def not_sent(self, job: int, scheduled: float, waited_from: float, why: str, payload_id: str = "") -> None:
        """An arrival that came due and was never sent: a record of its own, counted."""
        now = time.perf_counter()
        result = RequestResult(payload_id, scheduled, error="not_sent", detail=why)
        result.elapsed_s = result.queued_s = now - waited_from
        if self.load.turns > 1:
            result.turn = 1
        self.finish(result, job)

    def finish(self, result: RequestResult, job: int) -> None:
        result.warmup = job < self.load.warmup
        self.results.append(result)
        self.on_result(result)
        if result.error == "connection_refused":
            now = time.perf_counter()
            self.refused_in_a_row += 1
            if self.refused_in_a_row == 1:
                self.first_refused_at = now
            # Every user refused, or (an open loop: no users to count) refusals only, for a second.
            everyone = self.refused_in_a_row >= self.users + 1
            if everyone or (self.refused_in_a_row >= 3 and now - self.first_refused_at >= 1.0):
                self.went_away(f"connection refused on every request ({self.refused_in_a_row} in a row)")
        elif result.error is None or result.error.startswith("http_"):
            self.refused_in_a_row = 0  # it answered

    def went_away(self, how: str) -> None:
        if self.gone is None:
            self.gone = ServerGone(round(time.perf_counter() - self.start, 3), _utc_now(), how)

    async def request(self, job: int, payload: Payload, prompt: Any = None, turn: int | None = None,
                      scheduled: float | None = None, queued_s: float | None = None) -> RequestResult:  # fmt: skip
        """One request; if the level cancels it (duration over, server gone, interrupt) it is still recorded, as what
        it was, with its TTFT where a first token came. `queued_s`: how long it waited for a slot before this."""
        sent = time.perf_counter()
        load = self.load
        collect = load.collect_text or load.turns > 1
        result = RequestResult(payload.id, sent - self.start)
        result.turn, result.queued_s = turn, queued_s
        result.document, result.prefix_group = payload.document, payload.prefix_group
        sent_prompt = payload.prompt if prompt is None else prompt
        result.prompt_key = prompt_key(sent_prompt)
        try:
            await send(self.session, self.target, payload.id, sent_prompt, payload.max_tokens or load.max_tokens,
                       load.ignore_eos, self.start, collect, result)  # fmt: skip
        except asyncio.CancelledError:
            result.error, result.e2e_s = self.cancel_kind, None
            result.elapsed_s = time.perf_counter() - sent
            result.cut_off = self.cancel_kind in ("cut_off", "interrupted")
            result.detail = {"cut_off": "still running when the level ended", "interrupted": "in flight at the interrupt"}.get(
                self.cancel_kind, "the server went away"
            )
            self.finish(result, job)
            raise
        if scheduled is not None:
            # The client's own lag: how late it left, the wait for a slot under --max-inflight apart.
            result.late_s = max(0.0, result.start_s - scheduled - (queued_s or 0.0))
        self.finish(result, job)
        return result

    async def job(self, j: int, payloads: Payloads, scheduled: float | None = None,
                  queued_s: float | None = None) -> RequestResult:  # fmt: skip
        """One request, or one conversation of `turns` turns (a failed turn ends it). Returns the last result."""
        turns = self.load.turns
        if turns <= 1:
            return await self.request(j, await payloads.take(), scheduled=scheduled, queued_s=queued_s)
        history: list[dict[str, str]] = []
        result = None
        for k in range(1, turns + 1):
            payload = await payloads.take()
            history.append({"role": "user", "content": payload.prompt})
            prompt = history if self.target.api == "chat" else _transcript(history)
            result = await self.request(j, payload, list(prompt) if isinstance(prompt, list) else prompt, k,
                                        scheduled if k == 1 else None, queued_s if k == 1 else None)  # fmt: skip
            if not result.ok or k == turns or self.over():
                break
            history.append({"role": "assistant", "content": result.text or ""})
            if self.load.think_time_s > 0:
                await asyncio.sleep(self.load.think_time_s)
        assert result is not None
        return result

    async def watch_health(self) -> None:
        """Poll the server's /health on a connection of its own (never queued behind the level's requests). Gone:
        its connection refused HEALTH_REFUSED times in a row, or no success for HEALTH_DEAD_S seconds of failures
        (no answer within HEALTH_TIMEOUT_S, a 5xx, a broken connection). A slow answer is an answer. A server without
        /health (404) is left to the refused-connection rule of the requests."""
        import aiohttp

        root = self.target.base_url.rstrip("/")
        url = (root[:-3] if root.endswith("/v1") else root) + "/health"
        timeout = aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)
        refused, failing_since, last = 0, None, ""
        headers = {k: v for k, v in self.target.headers().items() if k == "Authorization"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), headers=headers) as session:
            while self.gone is None:
                await asyncio.sleep(HEALTH_EVERY_S)
                probed = time.perf_counter()
                try:
                    async with session.get(url, timeout=timeout) as response:
                        if response.status == 404:
                            return
                        ok, last = response.status < 500, f"HTTP {response.status}"
                    refused = 0
                except aiohttp.ClientConnectorError as exc:
                    ok, last = False, f"connection refused ({type(exc).__name__})"
                    refused += 1
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    ok, last, refused = False, type(exc).__name__, 0
                if ok:
                    failing_since = None
                    continue
                failing_since = probed if failing_since is None else failing_since
                if refused >= HEALTH_REFUSED:
                    self.went_away(f"/health refused its connection {refused} times in a row")
                elif time.perf_counter() - failing_since >= HEALTH_DEAD_S:
                    self.went_away(f"/health failed for {time.perf_counter() - failing_since:.0f} s without an answer "
                                   f"(last: {last})")  # fmt: skip

    async def run(self, work: Callable[[], Any]) -> list[RequestResult]:
        """Run the level's work until it ends by itself, or cancel what is in flight when the server is gone or the
        duration's grace is over (checked every 0.1 s)."""
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.users + 1, force_close=False)  # the pool never limits the load
        self.start = time.perf_counter()
        async with aiohttp.ClientSession(connector=connector) as self.session:
            main = asyncio.ensure_future(work())
            health = asyncio.ensure_future(self.watch_health())
            cut_at = None if self.deadline is None else self.deadline + self.load.grace_s
            while not main.done():
                await asyncio.wait({main}, timeout=0.1)
                if main.done():
                    break
                if self.gone is not None:
                    self.cancel_kind = "server_gone"
                    main.cancel()
                elif self.abort():
                    self.cancel_kind = "interrupted"
                    main.cancel()
                elif cut_at is not None and time.perf_counter() >= cut_at:
                    self.cancel_kind = "cut_off"
                    main.cancel()
            health.cancel()
            for task in (main, health):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return self.results


def prompt_key(prompt: str | Sequence[dict[str, str]]) -> str:
    """A digest of the exact input of a request (a text, or a conversation's messages): two answers are only
    comparable where it is the same."""
    import hashlib
    import json

    text = prompt if isinstance(prompt, str) else json.dumps(list(prompt), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _transcript(history: Sequence[dict[str, str]]) -> str:
    """A conversation as one completions prompt."""
    lines = [f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in history]
    return "\n".join(lines) + "\nAssistant:"


def measured_window(results: Sequence[RequestResult]) -> float:
    """From the first measured request's send to the last measured request's end (answer or error); arrivals never
    sent are not in it."""
    measured = [r for r in results if not r.warmup and not r.cut_off and r.error != "not_sent"]
    if not measured:
        return 0.0
    return max(r.start_s + r.elapsed_s for r in measured) - min(r.start_s for r in measured)


def _backoff_s(refused: int) -> float:
    """A user's wait after `refused` refused connections in a row: 50 ms, doubling, at most 1 s."""
    return 0.0 if refused == 0 else min(1.0, 0.05 * 2 ** (refused - 1))


Finished = tuple[list[RequestResult], ServerGone | None]  # a level's results, and the server's going away if it did


async def closed_loop(target: Target, payloads: Payloads, concurrency: int, load: Load,
                      on_result: Callable[[RequestResult], None], stop: Stop,
                      abort: Callable[[], bool] = never_abort) -> Finished:  # fmt: skip
    counter = itertools.count()
    total = None if load.requests is None else load.warmup + load.requests
    if total is not None:
        payloads.prepare(total * load.turns)
    level = _Level(target, load, concurrency, on_result, stop, abort)

    async def user() -> None:
        refused = 0
        ready = time.perf_counter()  # this user's schedule: send as soon as its previous answer ended (its send lag)
        while not level.over():
            j = next(counter)
            if total is not None and j >= total:
                return
            if level.deadline is not None and j >= load.warmup and time.perf_counter() >= level.deadline:
                return
            result = await level.job(j, payloads, ready - level.start)
            ready = level.start + result.start_s + result.elapsed_s
            refused = refused + 1 if result.error == "connection_refused" else 0
            if refused:
                await asyncio.sleep(_backoff_s(refused))
                ready = time.perf_counter()

    async def users() -> None:
        await asyncio.gather(*(user() for _ in range(concurrency)))

    results = await level.run(users)
    return results, level.gone


def gamma_arrivals(rate: float, burstiness: float, ramp_up_s: float, seed: int) -> Iterator[float]:
    """Arrival times (s from the level's start) at `rate` per second: gaps from a gamma distribution of shape
    `burstiness` and mean 1 / rate (1 is Poisson; below 1 burstier, above 1 steadier), as vLLM's bench serve draws
    them. With `ramp_up_s`, the rate climbs linearly from 0 to `rate` over that time: the gaps are drawn for unit
    rate and mapped through the integrated rate, so the pattern of bursts is kept while the rate rises."""
    rng = random.Random(seed)
    ramp_area = rate * ramp_up_s / 2  # expected arrivals during the ramp
    area = 0.0
    while True:
        area += rng.gammavariate(burstiness, 1.0 / burstiness)
        if ramp_up_s > 0 and area < ramp_area:
            yield math.sqrt(2 * ramp_up_s * area / rate)
        else:
            yield ramp_up_s + (area - ramp_area) / rate


async def open_loop(target: Target, pick: Callable[[int], Payloads], arrivals: Iterator[float], load: Load,
                    max_inflight: int, on_result: Callable[[RequestResult], None], stop: Stop,
                    abort: Callable[[], bool] = never_abort) -> Finished:  # fmt: skip
    """Jobs sent at their arrival times whatever is still in flight, up to `max_inflight`; beyond that a job waits
    for a slot (`queued_s`), apart from its lateness with a slot free (`late_s`, the client's own lag). A job whose
    slot comes too late (the level stopped, or its duration over) is recorded `not_sent`. `pick(j)` gives the
    payloads job j draws from (a trace: one row each)."""
    level = _Level(target, load, max_inflight, on_result, stop, abort)
    total = None if load.requests is None else load.warmup + load.requests
    gate = asyncio.Semaphore(max_inflight)
    cap = f"--max-inflight {max_inflight}"

    async def one(j: int, scheduled: float) -> None:
        waiting = time.perf_counter()
        try:
            await gate.acquire()
        except asyncio.CancelledError:
            level.not_sent(j, scheduled, waiting, f"waiting for a free slot ({cap}) when the level ended: "
                           f"{level.why_over()}")  # fmt: skip
            raise
        try:
            queued = time.perf_counter() - waiting
            if level.over():
                level.not_sent(j, scheduled, waiting, f"waiting for a free slot ({cap}) when the level stopped: "
                               f"{level.why_over()}")  # fmt: skip
                return
            if level.deadline is not None and j >= load.warmup and time.perf_counter() >= level.deadline:
                level.not_sent(j, scheduled, waiting, f"its slot ({cap}) came free only after the level's "
                               f"{load.duration_s:g} s")  # fmt: skip
                return
            await level.job(j, pick(j), scheduled, queued)
        finally:
            gate.release()

    async def schedule() -> None:
        tasks: list[asyncio.Future] = []
        try:
            await send_on_time(tasks)
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def send_on_time(tasks: list[asyncio.Future]) -> None:
        for j, arrival in enumerate(arrivals):
            if (total is not None and j >= total) or (
                load.duration_s is not None and j >= load.warmup and arrival > load.duration_s
            ):
                break
            delay = level.start + arrival - time.perf_counter()
            while delay > 0 and not level.over():  # a long gap still notices the server going away
                await asyncio.sleep(min(delay, 0.2))
                delay = level.start + arrival - time.perf_counter()
            if level.over():
                if delay <= 0:  # it came due as the level stopped, before it could be scheduled: a record all the same
                    level.not_sent(j, arrival, level.start + arrival, f"due as the level stopped: {level.why_over()}")
                    continue
                break
            tasks.append(asyncio.ensure_future(one(j, arrival)))

    results = await level.run(schedule)
    return results, level.gone
