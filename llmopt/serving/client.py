"""One request to an OpenAI-compatible endpoint, timed token by token.

Clocks: `time.perf_counter()` at send and at each streamed chunk that carries a token of any kind: the answer's
text, a reasoning model's thinking (`reasoning_content`, `reasoning`) or a tool call (the server was decoding for
each). vLLM's bench serve stamps every chunk with choices; a chunk that carries nothing (a chat stream's opening role
announcement, llama.cpp's closing chunk with only a finish reason) is not a token here, so it neither starts TTFT
nor adds an inter-token gap nor counts as an output token. TTFT is send to the first token chunk; **time to first
output token** (TTFO, as AIPerf names it) is send to the first chunk of the answer itself (text, content or a tool
call), so that a reasoning model's thinking phase is in TTFO and not in TTFT. Inter-token latencies are the gaps
between token chunks; e2e ends at the last of them (the usage chunk and `[DONE]` after it carry no token). Token
counts come from the server's `usage` field (asked for with `stream_options.include_usage`), and only where the
server gives none from the number of token chunks (flagged `usage_from_server: false`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Target:
    base_url: str  # e.g. http://127.0.0.1:8000 (with or without /v1)
    model: str
    api: str = "completions"  # or "chat"
    stream: bool = True
    api_key: str | None = None  # from the environment; never written anywhere
    timeout_s: float = 600.0

    @property
    def url(self) -> str:
        root = self.base_url.rstrip("/")
        root = root if root.endswith("/v1") else root + "/v1"
        return root + ("/chat/completions" if self.api == "chat" else "/completions")

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


@dataclass
class RequestResult:
    payload_id: str
    start_s: float = 0.0  # perf_counter at send, relative to the level's start (a record never sent: its arrival)
    e2e_s: float | None = None
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    usage_from_server: bool = False
    error: str | None = None  # a kind: http_401, connection_error, timeout, bad_response, ...
    detail: str | None = None
    warmup: bool = False
    elapsed_s: float = 0.0  # send to the end of the answer or the error
    late_s: float | None = None  # open loop: how long after its scheduled arrival it was sent
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens: prompt tokens the server had cached
    turn: int | None = None  # multi-turn: the turn's index in its conversation, from 1
    cut_off: bool = False  # cancelled at the end of --duration (and its grace) or by an interrupt: left out of figures
    text: str | None = None  # the answer's text, kept only when asked for (multi-turn history)
    ttfo_s: float | None = None  # time to first output token: the first chunk of the answer, reasoning aside
    max_tokens: int | None = None  # the new tokens asked for
    queued_s: float | None = None  # open loop: the wait for a free slot under --max-inflight (not the client's lag)
    document: str | None = None  # the dataset document the prompt was made from
    prompt_key: str | None = None  # a digest of the exact input sent (history and prefix included)
    prefix_group: int | None = None  # the shared prefix that starts the prompt, if one does

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def tpot_ms(self) -> float | None:
        if self.ttft_s is None or self.e2e_s is None or not self.output_tokens or self.output_tokens < 2:
            return None
        return 1000 * (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    def as_record(self) -> dict[str, Any]:
        return {
            "payload": self.payload_id, "start_s": self.start_s, "ok": self.ok, "warmup": self.warmup,
            "e2e_s": self.e2e_s, "ttft_s": self.ttft_s, "tpot_ms": self.tpot_ms, "itl_ms": [1000 * x for x in self.itl_s],
            "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens,
            "usage_from_server": self.usage_from_server, "error": self.error, "detail": self.detail,
            "elapsed_s": self.elapsed_s, "late_s": self.late_s, "cached_tokens": self.cached_tokens, "turn": self.turn,
            "cut_off": self.cut_off, "text": self.text, "ttfo_s": self.ttfo_s, "max_tokens": self.max_tokens,
            "queued_s": self.queued_s, "document": self.document, "prompt_key": self.prompt_key,
            "prefix_group": self.prefix_group,
        }  # fmt: skip


def request_body(target: Target, prompt: str | list[dict[str, str]], max_tokens: int, ignore_eos: bool) -> dict[str, Any]:
    """`prompt`: a text, or (chat API, multi-turn) the conversation's messages so far."""
    body: dict[str, Any] = {"model": target.model, "max_tokens": max_tokens, "temperature": 0.0, "stream": target.stream}
    if target.api == "chat":
        body["messages"] = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if target.stream:
        body["stream_options"] = {"include_usage": True}
    if ignore_eos:
        body["ignore_eos"] = True  # a vLLM and TGI extension; other servers ignore unknown fields or refuse them
    return body


def _chunk_answer(choice: dict[str, Any], api: str) -> tuple[str, bool, bool]:
    """A streamed choice's answer text; whether it carries any of the answer (text, or a tool call) rather than
    reasoning only; and whether it carries a token at all (not an empty role announcement or finish)."""
    if api == "chat":
        delta = choice.get("delta") or choice.get("message") or {}
        text = delta.get("content") or ""
        answer = bool(text or delta.get("tool_calls") or delta.get("function_call"))
        return text, answer, answer or bool(delta.get("reasoning_content") or delta.get("reasoning"))
    text = choice.get("text") or ""
    return text, bool(text), bool(text)


def _short(text: str, secret: str | None) -> str:
    text = " ".join(text.split())[:200]
    return text.replace(secret, "***") if secret else text


async def send(session: Any, target: Target, payload_id: str, prompt: str | list[dict[str, str]], max_tokens: int,
               ignore_eos: bool, level_start: float, collect: bool = False,
               result: RequestResult | None = None) -> RequestResult:  # fmt: skip
    """Send one request and time it; every failure becomes an error kind on the result, never an exception.
    `collect`: keep the answer's text on the result (a multi-turn conversation sends it back as history).
    `result`: the record to fill, which the caller keeps if the request is cancelled (its TTFT, where one came)."""
    import asyncio

    import aiohttp

    started = time.perf_counter()
    if result is None:
        result = RequestResult(payload_id)
    result.start_s = started - level_start
    result.max_tokens = max_tokens
    body = request_body(target, prompt, max_tokens, ignore_eos)
    chunks = 0
    last_token = None
    pieces: list[str] = []
    try:
        timeout = aiohttp.ClientTimeout(total=target.timeout_s)
        async with session.post(target.url, json=body, headers=target.headers(), timeout=timeout) as response:
            if response.status != 200:
                result.error = f"http_{response.status}"
                result.detail = _short(await response.text(), target.api_key)
            usage = None
            if target.stream and response.status == 200:
                async for raw in response.content:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if chunk.get("error"):
                        error = chunk["error"]
                        result.error = "stream_error"
                        result.detail = _short(
                            str(error.get("message", error) if isinstance(error, dict) else error), target.api_key
                        )
                        break
                    choices = chunk.get("choices")
                    piece, answer, token = _chunk_answer(choices[0], target.api) if choices else ("", False, False)
                    if token:
                        now = time.perf_counter()
                        if collect and piece:
                            pieces.append(piece)
                        if last_token is None:
                            result.ttft_s = now - started
                        else:
                            result.itl_s.append(now - last_token)
                        if answer and result.ttfo_s is None:
                            result.ttfo_s = now - started
                        last_token = now
                        chunks += 1
                    usage = chunk.get("usage") or usage
            elif response.status == 200:
                answer = await response.json()
                usage = answer.get("usage")
                if collect:
                    pieces.append(_answer_text(answer, target.api))
            if response.status == 200 and result.error is None:
                if not target.stream:
                    result.e2e_s = time.perf_counter() - started
                elif last_token is None:
                    result.error, result.detail = "bad_response", "the stream carried no token"
                else:
                    result.e2e_s = last_token - started  # the last token, not the usage chunk or [DONE] after it
    except TimeoutError:
        result.error, result.detail = "timeout", f"no complete response within {target.timeout_s} s"
    except aiohttp.ClientConnectorError as exc:
        result.error, result.detail = "connection_refused", _short(str(exc), target.api_key)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        result.error, result.detail = "server_disconnected", _short(str(exc) or type(exc).__name__, target.api_key)
    except aiohttp.ClientError as exc:
        result.error, result.detail = "connection_error", _short(f"{type(exc).__name__}: {exc}", target.api_key)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        result.error, result.detail = "bad_response", _short(str(exc), target.api_key)
    except asyncio.CancelledError:
        raise
    result.elapsed_s = time.perf_counter() - started
    if result.error:
        result.e2e_s = None
        return result
    if usage:
        result.prompt_tokens = usage.get("prompt_tokens")
        result.output_tokens = usage.get("completion_tokens")
        result.usage_from_server = True
        details = usage.get("prompt_tokens_details")  # vLLM sends it with --enable-prompt-tokens-details
        if isinstance(details, dict) and details.get("cached_tokens") is not None:
            result.cached_tokens = int(details["cached_tokens"])
    elif target.stream:
        result.output_tokens = chunks
    if collect:
        result.text = "".join(pieces)
    return result


def _answer_text(answer: dict[str, Any], api: str) -> str:
    choices = answer.get("choices") or [{}]
    if api == "chat":
        return (choices[0].get("message") or {}).get("content") or ""
    return choices[0].get("text") or ""
