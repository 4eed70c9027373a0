"""`lead`: the first sentences of the document, no model. Any strategy should beat this ROUGE floor."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from llmopt.strategies.base import Generation, GenerationParams, Strategy

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def lead_sentences(text: str, n: int) -> str:
    return " ".join(_SENTENCE_END.split(text.strip())[:n])


class LeadStrategy(Strategy):
    name = "lead"
    description = "no model: the document's first sentences (a ROUGE floor; needs no GPU)"
    default_model = None
    uses_prompt = False
    needs_model = False

    def __init__(self, model: str, **options: Any) -> None:
        super().__init__(model, **options)
        self.sentences = int(options.get("lead_sentences") or 3)

    def load(self) -> None:
        pass

    def generate_batch(self, prompts: Sequence[str], params: GenerationParams) -> list[Generation]:
        out = []
        for prompt in prompts:
            text = lead_sentences(prompt, self.sentences)
            out.append(Generation(text, len(prompt.split()), len(text.split()), "stop"))
        return out

    def describe(self) -> dict[str, Any]:
        return {"device": "cpu", "dtype": None, "lead_sentences": self.sentences}
