"""A test fixture, not a feature: an OpenAI-compatible streaming server that does no work. Every request gets
`--chunks` chunks of one word each, the first `--first-ms` after the request arrived and the others `--gap-ms` apart,
each sent at its scheduled time (an absolute deadline, so one late chunk does not shift the rest). With both at 0 it
answers at once: what a load generator then measures is the generator itself. `--reasoning N` (chat) sends the first
N chunks as `reasoning_content`, as a reasoning model's server does; `--tail-ms` waits that long after the last chunk
before the usage chunk and `[DONE]`; `--health-ms` answers /health that late (a busy server); `--by-history` makes
the word depend on the conversation so far (` tok<number of messages>`), as a model's answer does; `--max-running N`
streams at most N answers at once and queues the other requests in arrival order, as a server whose batch is full
does (each answer's schedule then starts when it leaves the queue). `--framed MS` wraps the tokens as many servers
do: a chat stream's opening role announcement MS before the first token, a closing choice with only its finish reason
MS after the last, and no usage (the client then counts the chunks itself).

It also serves GET /v1/models, GET /health, and GET /metrics (Prometheus text with requests and chunks counters and
the queue's length; with
`--metrics html` an HTML page instead, with `--metrics none` a 404), and with `--log PATH` writes each request's
scheduled and actual chunk times (time.monotonic(), which is perf_counter's clock on Linux) as JSONL at exit.

python tests/instant_server.py --port 8123 --chunks 16 --gap-ms 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

WORD = " tok"


def make_app(chunks: int, first_ms: float, gap_ms: float, metrics: str, log: list | None, reasoning: int = 0,
             tail_ms: float = 0.0, health_ms: float = 0.0, by_history: bool = False,
             max_running: int = 0, framed_ms: float | None = None) -> web.Application:  # fmt: skip
    served = {"requests": 0, "chunks": 0, "waiting": 0}
    slots = asyncio.Semaphore(max_running) if max_running else None

    async def completions(request: web.Request) -> web.StreamResponse:
        if slots is None:
            return await answer(request)
        served["waiting"] += 1
        try:
            await slots.acquire()
        finally:
            served["waiting"] -= 1
        try:
            return await answer(request)
        finally:
            slots.release()

    async def answer(request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        n = chunks
        word = f" tok{len(body.get('messages') or [1])}" if by_history else WORD
        served["requests"] += 1
        usage = {"prompt_tokens": 32, "completion_tokens": n, "total_tokens": 32 + n}
        if not body.get("stream"):
            text = word * n
            choice = {"index": 0, "message": {"role": "assistant", "content": text}} if chat else {"index": 0, "text": text}
            return web.json_response({"id": "x", "object": "text_completion", "choices": [choice], "usage": usage})
        kind = "chat.completion.chunk" if chat else "text_completion"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        actual = []
        if framed_ms is not None and chat:
            await asyncio.sleep(max(0.0, arrived + (first_ms - framed_ms) / 1000 - time.monotonic()))
            opening = {"index": 0, "delta": {"role": "assistant", "content": ""}}
            chunk = {"id": "x", "object": kind, "created": 0, "model": "instant", "choices": [opening]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        for k in range(n):
            due = arrived + (first_ms + k * gap_ms) / 1000
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            field = "reasoning_content" if k < reasoning else "content"
            choice = {"index": 0, "delta": {field: word}} if chat else {"index": 0, "text": word, "finish_reason": None}
            chunk = {"id": "x", "object": kind, "created": 0, "model": "instant", "choices": [choice]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            actual.append(time.monotonic())
            served["chunks"] += 1
        if framed_ms is not None:
            await asyncio.sleep(framed_ms / 1000)
            ending = (
                {"index": 0, "delta": {}, "finish_reason": "length"}
                if chat
                else {"index": 0, "text": "", "finish_reason": "length"}
            )
            chunk = {"id": "x", "object": kind, "created": 0, "model": "instant", "choices": [ending]}
            await response.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
            await response.write_eof()
            if log is not None:
                log.append({"arrived": arrived, "actual": actual})
            return response
        if tail_ms:
            await asyncio.sleep(tail_ms / 1000)
        last = {"id": "x", "object": kind, "created": 0, "model": "instant", "choices": [], "usage": usage}
        await response.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        if log is not None:
            log.append({"arrived": arrived, "actual": actual})
        return response

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "instant", "object": "model"}]})

    async def health(request: web.Request) -> web.Response:
        if health_ms:
            await asyncio.sleep(health_ms / 1000)
        return web.Response(text="")

    async def prometheus(request: web.Request) -> web.Response:
        if metrics == "html":
            return web.Response(text="<html><body>metrics live elsewhere</body></html>", content_type="text/html")
        if metrics == "none":
            raise web.HTTPNotFound()
        text = (
            "# HELP instant:requests_total Requests served.\n# TYPE instant:requests_total counter\n"
            f"instant:requests_total {served['requests']}\n"
            "# HELP instant:chunks_total Chunks sent.\n# TYPE instant:chunks_total counter\n"
            f"instant:chunks_total {served['chunks']}\n"
            "# HELP instant:requests_waiting Requests queued for a slot.\n# TYPE instant:requests_waiting gauge\n"
            f"instant:requests_waiting {served['waiting']}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", prometheus)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--chunks", type=int, default=16)
    p.add_argument("--first-ms", type=float, default=0.0)
    p.add_argument("--gap-ms", type=float, default=0.0)
    p.add_argument("--reasoning", type=int, default=0, help="chat: the first N chunks are reasoning_content")
    p.add_argument("--tail-ms", type=float, default=0.0, help="wait before the usage chunk and [DONE]")
    p.add_argument("--health-ms", type=float, default=0.0, help="answer /health this late")
    p.add_argument("--by-history", action="store_true", help="the word names the number of messages sent")
    p.add_argument("--framed", type=float, help="ms: a role chunk before and a bare finish after the tokens, no usage")
    p.add_argument("--max-running", type=int, default=0, help="stream at most N answers at once, queue the rest (0: no limit)")
    p.add_argument("--metrics", choices=["prometheus", "html", "none"], default="prometheus")
    p.add_argument("--log", help="JSONL of each request's chunk times, written at exit")
    args = p.parse_args()
    log: list | None = [] if args.log else None
    try:
        web.run_app(make_app(args.chunks, args.first_ms, args.gap_ms, args.metrics, log, args.reasoning,
                             args.tail_ms, args.health_ms, args.by_history, args.max_running, args.framed),
                    host="127.0.0.1", port=args.port,
                    print=None, access_log=None)  # fmt: skip
    finally:
        if args.log and log is not None:
            with open(args.log, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(row) + "\n" for row in log)


if __name__ == "__main__":
    main()
