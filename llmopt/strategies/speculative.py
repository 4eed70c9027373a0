"""Speculative decoding in transformers: prompt lookup, where the draft tokens are copied from the prompt itself. It
suits summarization, whose output repeats phrases of its document. The model checks the drafts in one forward pass
and keeps the ones it would have chosen, so greedy outputs are exactly the plain mode's.

transformers does not report how many drafts it accepted; the forward passes tell it. Each pass yields one token of
the model's own plus the drafts it accepted, and carries, besides the one new token (the whole prompt in the first
pass), the drafts to check: accepted = generated tokens - passes, drafted = input tokens beyond those.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmopt.strategies.base import Generation, GenerationParams, Prompt
from llmopt.strategies.hf import TransformersStrategy

DEFAULT_DRAFT_TOKENS = 10  # transformers' documented example; the usual choice
NGRAM = 2


class PromptLookupStrategy(TransformersStrategy):
    name = "prompt-lookup"
    description = "transformers with prompt-lookup decoding (drafts copied from the document), one document at a time"
    max_batch_size = 1  # transformers' assisted generation takes one sequence
    options_taken = ("speculative_tokens",)

    def __init__(self, model: str, **options: Any) -> None:
        super().__init__(model, **options)
        self.draft_tokens = int(options.get("speculative_tokens") or DEFAULT_DRAFT_TOKENS)
        self._inputs: list[int] = []
        self._reset_counts()

    def _reset_counts(self) -> None:
        self.forwards = self.drafted = self.generated = 0

    def load(self) -> None:
        super().load()

        def count(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None:
                self._inputs.append(int(ids.shape[1]))

        self._model.register_forward_pre_hook(count, with_kwargs=True)

    def generate_options(self, params: GenerationParams, batch_size: int, prompt_width: int) -> dict[str, Any]:
        return {"prompt_lookup_num_tokens": self.draft_tokens, "max_matching_ngram_size": NGRAM}

    def generate_batch(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[Generation]:
        self._inputs = []
        results = super().generate_batch(prompts, params)
        if self._inputs and len(results) == 1:
            first_new = self._inputs[0] - results[0].prompt_tokens  # drafts checked in the first pass
            self.forwards += len(self._inputs)
            self.drafted += first_new + sum(n - 1 for n in self._inputs[1:])
            self.generated += results[0].output_tokens
        return results

    def warm_up(self, batches: Sequence[Sequence[Prompt]], params: GenerationParams) -> None:
        super().warm_up(batches, params)
        self._reset_counts()  # the run's counts only

    def describe(self) -> dict[str, Any]:
        accepted = max(self.generated - self.forwards, 0)
        return {
            **super().describe(),
            "speculative": {
                "method": "prompt lookup", "draft_tokens": self.draft_tokens, "ngram": NGRAM,
                "drafted_tokens": self.drafted, "accepted_tokens": accepted,
                "acceptance_rate": accepted / self.drafted if self.drafted else None,
                "forward_passes": self.forwards,
                "tokens_per_forward": self.generated / self.forwards if self.forwards else None,
                "counted_from": "forward passes (transformers reports no acceptance)",
            },
        }  # fmt: skip
