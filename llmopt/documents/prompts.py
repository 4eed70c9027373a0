"""The prompt templates: the study's two (transformers and vLLM rows used different ones), and the chat form."""

from __future__ import annotations

from collections.abc import Callable


# The study used two different prompts; both are kept so its rows can be reproduced exactly.
def _published_hf(document: str) -> str:
    return document + "\n\n\nSummarize the above text in 1-3 sentences."


def _published_vllm(document: str) -> str:
    return f"Document: '{document}' .\n\nSummary of the above Document in 1-3 sentences: '"


PROMPTS: dict[str, Callable[[str], str]] = {
    "published-hf": _published_hf,
    "published-vllm": _published_vllm,
    # "chat" wraps the published-hf text in the tokenizer's chat template (done by the strategy).
    "chat": _published_hf,
}
