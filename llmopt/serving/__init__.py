"""Serving: load tests of OpenAI-compatible endpoints (one timed request, closed and open loops, per-level figures,
the report), the vLLM server they can start, and the in-process batch benchmark of prefill and decode."""
