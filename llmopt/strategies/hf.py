"""transformers loading modes: default, sdpa, flash-attn, 8bit, 4bit, gptq.

Each mode differs only in how `from_pretrained` is called; generation, token counting and decoding are shared.
torch and transformers are imported inside methods so that listing strategies stays instant.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from llmopt.documents.workloads import random_token_ids
from llmopt.errors import UsageError
from llmopt.models import precision, resolve
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
    quiet_library_logs,
    warm_up_params,
)

TRANSFORMERS = (
    Requirement("torch", "torch"),
    Requirement("transformers", "transformers"),
    Requirement("accelerate", "accelerate"),
)
BITSANDBYTES = Requirement("bitsandbytes", "bitsandbytes")
DTYPES = ("float16", "bfloat16", "float32")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without them torch emulates bf16 matmuls, slower than float32 (4x at batch 16 on AVX2)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_dtype(device: str, config: Any) -> str:
    """The dtype a run gets without --dtype: `precision.serving_dtype` for this machine (vLLM uses the same rule)."""
    from llmopt.strategies import cuda_capability

    capability = cuda_capability() if device == "cuda" else None
    return precision.serving_dtype(precision.checkpoint_dtype(config), device, capability, cpu_has_native_bf16())


TOKEN_ID_SETTINGS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def keep_token_ids_only(model: Any) -> dict[str, Any]:
    """Replace the model's generation_config by one holding only the checkpoint's token ids (which tokens end a
    sequence is the checkpoint's to say); return the other settings it held, which llmopt does not apply.

    transformers fills every setting a `generate` call leaves unset from the model's generation_config, whatever the
    call asked for: a Qwen2-Instruct's repetition_penalty=1.05 (or no_repeat_ngram_size, min_new_tokens,
    suppress_tokens...) would apply under transformers and not under vLLM or llama.cpp."""
    from transformers import GenerationConfig

    shipped = model.generation_config
    # transformers' own fallbacks: a checkpoint that restates one of them changes nothing, and is not reported.
    defaults = getattr(GenerationConfig, "_get_default_generation_params", dict)()
    dropped = {
        k: v for k, v in shipped.to_diff_dict().items()
        if k not in TOKEN_ID_SETTINGS and k != "transformers_version" and not k.startswith("_")
        and v != defaults.get(k, v if v in (None, False) else None)
    }  # fmt: skip
    kept = {k: getattr(shipped, k, None) for k in TOKEN_ID_SETTINGS}
    model.generation_config = GenerationConfig(**{k: v for k, v in kept.items() if v is not None})
    return dropped


class TransformersStrategy(Strategy):
    requires = TRANSFORMERS
    attn_implementation: ClassVar[str | None] = None  # None: whatever transformers picks for the model
    cuda_dtype: ClassVar[str | None] = None  # the only dtype a mode's CUDA kernels compute in, where there is one

    def __init__(self, model: str, **options: Any) -> None:
        super().__init__(model, **options)
        self.dtype_name: str | None = options.get("dtype")
        self.trust_remote_code: bool = bool(options.get("trust_remote_code", False))
        self.weights: str = options.get("weights") or "pretrained"
        self._path: str | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._config: Any = None
        self._device = "cpu"
        self._generation: dict[str, Any] | None = None  # GenerationParams.sampling() of the last generation
        self._checkpoint_generation: dict[str, Any] = {}

    # What distinguishes the modes.
    def quantization_config(self, torch: Any) -> Any:
        return None

    def check_checkpoint(self, config: Any) -> None:
        """Refuse a checkpoint this mode cannot honestly run (a GPTQ mode on plain weights). Default: any."""

    def fetch(self) -> float | None:
        fetched = resolve.fetch(self.model, self.weights, self.trust_remote_code)
        self._path = fetched.path
        return fetched.download_s

    def load(self) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        quiet_library_logs()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.dtype_name is not None and self.dtype_name not in DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}")
        if self._path is None:
            self.fetch()
        path = self._path
        assert path is not None
        config = resolve.load_config(self.model, path, self.trust_remote_code)
        self.check_checkpoint(config)
        self._config = config
        forced = self.cuda_dtype if self._device == "cuda" else None
        if forced and self.dtype_name not in (None, forced):
            raise UsageError(f"{self.name} computes in {forced} on CUDA: --dtype {self.dtype_name} is not supported")
        if self.dtype_name is None:
            self.dtype_name = forced or default_dtype(self._device, config)
        self._context = getattr(config, "max_position_embeddings", None)
        if resolve.has_tokenizer(path):
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=self.trust_remote_code)
            tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._tokenizer = tokenizer
        kwargs: dict[str, Any] = {
            "dtype": getattr(torch, self.dtype_name),
            "device_map": {"": self._device},
            "trust_remote_code": self.trust_remote_code,
        }
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        quant = self.quantization_config(torch)
        if quant is not None:
            kwargs["quantization_config"] = quant
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.weights == "random":
                self._model = self._random_model(torch, config, kwargs).eval()
            else:
                self._model = AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()
        eos = self._model.generation_config.eos_token_id
        if eos is None:
            eos = config.eos_token_id if self._tokenizer is None else self._tokenizer.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos])
        pad = self._tokenizer.pad_token_id if self._tokenizer is not None else getattr(config, "pad_token_id", None)
        self._pad_id = pad if pad is not None else min(self._eos_ids - {None}, default=0)
        self._checkpoint_generation = keep_token_ids_only(self._model)

    def _random_model(self, torch: Any, config: Any, kwargs: dict[str, Any]) -> Any:
        """The architecture with random weights made on the device, loaded through from_pretrained so that the
        quantizing modes quantize them exactly as they would a checkpoint. No download, no access grant."""
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        model_cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in model_cls(config).state_dict().items()}
        dtype = kwargs["dtype"]
        device = self._device
        if device == "cuda":
            full_bytes = sum(shape.numel() for shape in shapes.values()) * dtype.itemsize
            free, _ = torch.cuda.mem_get_info()
            if full_bytes > 0.8 * free:  # a quantized model larger than the GPU in 16 bits: make the weights in RAM
                device = "cpu"
        generator = torch.Generator(device=device).manual_seed(0)
        std = getattr(config, "initializer_range", 0.02)
        state: dict[str, Any] = {}
        for key, shape in shapes.items():
            if key.endswith("norm.weight"):
                state[key] = torch.ones(shape, dtype=dtype, device=device)
            elif key.endswith("bias"):
                state[key] = torch.zeros(shape, dtype=dtype, device=device)
            else:
                state[key] = torch.empty(shape, dtype=dtype, device=device).normal_(0.0, std, generator=generator)
        model = model_cls.from_pretrained(None, config=config, state_dict=state, **kwargs)
        del state
        return model

    def random_prompt(self, n_tokens: int, seed: int) -> list[int]:
        return random_token_ids(self._config, n_tokens, seed)

    def _encode(self, prompts: Sequence[Prompt]) -> Any:
        import torch

        if all(isinstance(p, list) for p in prompts):  # token ids: pad on the left by hand
            width = max(len(p) for p in prompts)
            ids = [[self._pad_id] * (width - len(p)) + list(p) for p in prompts]
            mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
            return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
        if self._tokenizer is None:
            raise UsageError(f"model {self.model!r} has no tokenizer: give prompts as tokens with --workload")
        # A chat template already starts with the BOS text; adding another would change the prompt.
        bos = self._tokenizer.bos_token
        add_special = not (bos and prompts and prompts[0].startswith(bos))
        return self._tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=add_special)

    def count_tokens(self, prompts: Sequence[Prompt]) -> list[int]:
        if any(not isinstance(p, list) for p in prompts) and self._tokenizer is None:
            raise UsageError(f"model {self.model!r} has no tokenizer to count text: use --workload")
        bos = self._tokenizer.bos_token if self._tokenizer is not None else None
        return [
            len(p)
            if isinstance(p, list)
            else len(self._tokenizer(p, add_special_tokens=not (bos and p.startswith(bos)))["input_ids"])
            for p in prompts
        ]

    def context_length(self) -> int | None:
        return self._context

    def apply_chat_template(self, texts: Sequence[str]) -> list[str]:
        if self._tokenizer is None:
            raise UsageError(f"model {self.model!r} has no tokenizer, so no chat template")
        return chat_prompts(self._tokenizer, texts, self.model, "published-hf")

    def generate_options(self, params: GenerationParams, batch_size: int, prompt_width: int) -> dict[str, Any]:
        """Keyword arguments for `generate` beyond the inputs; the compiled mode adds its static cache."""
        return {}

    def generation_settings(self, params: GenerationParams) -> dict[str, Any]:
        """`generate`'s keyword arguments for every setting that chooses tokens, all from `params`. The model's own
        generation_config holds nothing else by now (`keep_token_ids_only`), so nothing of the checkpoint's applies."""
        gen: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            # ignore_eos: no end of sequence before the last token (and none after: the output is cut there).
            "min_new_tokens": params.max_new_tokens if params.ignore_eos else 0,
            "repetition_penalty": params.repetition_penalty, "pad_token_id": self._pad_id, "num_beams": 1,
            "no_repeat_ngram_size": 0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
        }  # fmt: skip
        if params.greedy:
            # Unset rather than neutral: transformers warns about sampling settings given to greedy decoding.
            gen.update(do_sample=False, temperature=None, top_p=None, top_k=None, min_p=None)
        else:
            gen.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                       min_p=params.min_p or None)  # fmt: skip
        return gen

    def generate_batch(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[Generation]:
        import torch

        enc = {k: v.to(self._device) for k, v in dict(self._encode(prompts)).items()}
        gen = self.generation_settings(params)
        if not params.greedy and params.seed is not None:
            torch.manual_seed(params.seed)
        self._generation = params.sampling()
        gen.update(self.generate_options(params, *enc["input_ids"].shape))
        with torch.inference_mode():
            out = self._model.generate(**enc, **gen)
        width = enc["input_ids"].shape[1]
        prompt_lengths = enc["attention_mask"].sum(dim=1).tolist()
        results = []
        for row, prompt_tokens in zip(out[:, width:].tolist(), prompt_lengths, strict=True):
            count, reason = len(row), "length"
            if not params.ignore_eos:
                for i, token in enumerate(row):
                    if token in self._eos_ids:
                        count, reason = i + 1, "stop"  # the end-of-sequence token counts, as vLLM counts it
                        break
            text = "" if self._tokenizer is None else self._tokenizer.decode(row[:count], skip_special_tokens=True).strip()
            results.append(Generation(text, int(prompt_tokens), count, reason, token_ids=row[:count]))
        return results

    def score_continuation(
        self, prompt: Prompt, continuation: Sequence[int], want: Sequence[Sequence[int]] | None, top_k: int
    ) -> list[PositionScore]:
        """One forward pass over prompt + continuation; logits only for the positions that predict the continuation."""
        import torch

        prompt_ids = list(self._encode([prompt])["input_ids"][0].tolist())
        ids = torch.tensor([prompt_ids + list(continuation)], device=self._device)
        with torch.inference_mode():
            logits = self._model(input_ids=ids, logits_to_keep=len(continuation) + 1).logits[0, :-1]
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        return full_logit_scores(logprobs, continuation, want, top_k)

    def synchronize(self) -> None:
        if self._device == "cuda":
            import torch

            torch.cuda.synchronize()

    def close(self) -> None:
        self._model = None
        from llmopt.measure.memory import free_device_memory

        free_device_memory()

    def describe(self) -> dict[str, Any]:
        config = getattr(self._model, "config", None)
        quant = getattr(config, "quantization_config", None)
        return {
            "device": self._device,
            "dtype": self.dtype_name,
            "weights": self.weights,
            "attn_implementation": getattr(config, "_attn_implementation", None),
            "quantization": quant.to_dict() if hasattr(quant, "to_dict") else quant,
            "architecture": architecture_of(self._config),
            "generation": self.generation_record(),
        }

    def generation_record(self) -> dict[str, Any] | None:
        """The settings the last generation used, and what the checkpoint's generation_config.json asked for that
        llmopt did not apply."""
        if self._generation is None:
            return None
        return {**self._generation, "checkpoint_settings_not_applied": self._checkpoint_generation}


class DefaultStrategy(TransformersStrategy):
    name = "default"
    description = (
        "transformers, the checkpoint's 16-bit dtype on CUDA (CPU: bf16 where native, else fp32), "
        "transformers' default attention (SDPA for Llama, as in the study)"
    )


class SdpaStrategy(TransformersStrategy):
    name = "sdpa"
    description = "transformers with PyTorch scaled-dot-product attention, asked for (Llama: what default runs)"
    attn_implementation = "sdpa"


class FlashAttentionStrategy(TransformersStrategy):
    name = "flash-attn"
    description = "transformers with FlashAttention-2 (needs flash-attn and an Ampere or newer GPU)"
    requires = (*TRANSFORMERS, Requirement("flash_attn", "flash-attn --no-build-isolation"))
    needs_cuda = True
    min_cuda_capability = (8, 0)
    attn_implementation = "flash_attention_2"


class Int8Strategy(TransformersStrategy):
    name = "8bit"
    description = "bitsandbytes LLM.int8 weights"
    requires = (*TRANSFORMERS, BITSANDBYTES)

    def quantization_config(self, torch: Any) -> Any:
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_8bit=True)


class FourBitStrategy(TransformersStrategy):
    name = "4bit"
    description = "bitsandbytes 4-bit weights, NF4 (--bnb-4bit-type fp4 is the study's)"
    requires = (*TRANSFORMERS, BITSANDBYTES)
    options_taken = ("bnb_4bit_type",)

    def quantization_config(self, torch: Any) -> Any:
        from transformers import BitsAndBytesConfig

        quant_type = self.options.get("bnb_4bit_type") or "nf4"
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_compute_dtype=getattr(torch, self.dtype_name or "float16"),
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "bnb_4bit_type": self.options.get("bnb_4bit_type") or "nf4"}


class GptqStrategy(TransformersStrategy):
    name = "gptq"
    description = "a pre-quantized GPTQ checkpoint through transformers (gptqmodel kernels)"
    default_model = "TheBloke/Llama-2-7B-Chat-GPTQ"
    requires = (*TRANSFORMERS, Requirement("optimum", "optimum"), Requirement("gptqmodel", "gptqmodel"))

    def check_checkpoint(self, config: Any) -> None:
        # transformers would load a plain checkpoint in 16 bits without a word; this row would then lie.
        precision.require_quantization(config, "gptq", self.name, self.model)


class CompiledStrategy(TransformersStrategy):
    """gpt-fast's recipe through transformers: a static KV cache sized once, and the decode step compiled
    (CUDA graphs on a GPU), so batch-1 decoding stops paying Python and kernel-launch overhead per token.

    The cache is llmopt's, one per batch size, kept for the whole run and reset before each call. transformers would
    make a new StaticCache at every `generate` (5.x); its tensors are static inputs of the compiled step, and
    CUDA-graph trees re-record a graph whenever a static input's address changes: every timed batch would pay a
    recording (torch 2.13's `mark_static_address`, unguarded)."""

    name = "compile"
    description = "transformers with a static KV cache and torch.compile'd decoding (the gpt-fast recipe)"

    def __init__(self, model: str, **options: Any) -> None:
        super().__init__(model, **options)
        self._max_cache_len: int | None = None
        self._caches: dict[int, Any] = {}  # batch size -> its StaticCache
        self._planned_sizes: set[int] = set()  # the run's batch sizes (warm_up): their caches stay alive

    def generate_options(self, params: GenerationParams, batch_size: int, prompt_width: int) -> dict[str, Any]:
        from transformers import CompileConfig

        # One cache length for the whole run: a new length is a new graph, compiled inside the timed loop.
        needed = prompt_width + params.max_new_tokens
        if self._max_cache_len is None or needed > self._max_cache_len:
            self._max_cache_len = max(self._max_cache_len or 0, needed)
            self._caches.clear()
        compile_config = CompileConfig(fullgraph=True, mode="reduce-overhead" if self._device == "cuda" else "default")
        compile_config._compile_all_devices = True  # transformers compiles on CUDA only unless told
        return {"past_key_values": self.cache_for(batch_size), "compile_config": compile_config}

    def cache_for(self, batch_size: int) -> Any:
        """The batch size's static cache, emptied for a new call. Sizes the run did not plan (batchbench moves from
        size to size) share one slot, so a sweep of sizes never holds every size's cache at once."""
        cache = self._caches.get(batch_size)
        if cache is None:
            for size in [s for s in self._caches if s not in self._planned_sizes]:
                del self._caches[size]
            from transformers import StaticCache

            cache = StaticCache(config=self._model.config, max_cache_len=self._max_cache_len)
            self._caches[batch_size] = cache
        import torch

        with torch.inference_mode():  # its tensors were made inside generate's inference mode
            cache.reset()
        return cache

    def warm_up(self, batches: Sequence[Sequence[Prompt]], params: GenerationParams) -> None:
        """Compile before the clock starts: the cache is sized for the longest prompt, and every batch size of the
        run (the first batch and a smaller last one) is run once, since each is a graph of its own."""
        longest = max(self.count_tokens([b[0] for b in batches]))
        self._max_cache_len = longest + params.max_new_tokens
        self._caches.clear()
        self._planned_sizes = {len(b) for b in batches}
        short = warm_up_params(params)
        for size in dict.fromkeys(len(b) for b in batches):
            batch = next(b for b in batches if len(b) == size)
            self.generate_batch(list(batch), short)

    def close(self) -> None:
        self._caches.clear()
        super().close()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "compiled": True, "max_cache_len": self._max_cache_len,
                "static_cache": "one per batch size, kept across calls and reset before each"}  # fmt: skip
