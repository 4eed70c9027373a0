"""transformers loading modes: default, sdpa, flash-attn, 8bit, 4bit, gptq.

Each mode differs only in how `from_pretrained` is called; generation, token counting and decoding are shared.
torch and transformers are imported inside methods so that listing strategies stays instant.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from llmopt import models
from llmopt.errors import UsageError
from llmopt.strategies.base import Generation, GenerationParams, Requirement, Strategy, chat_prompts

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


def default_dtype(device: str, gpu_dtype: str) -> str:
    if device == "cuda":
        return gpu_dtype
    return "bfloat16" if cpu_has_native_bf16() else "float32"


class TransformersStrategy(Strategy):
    requires = TRANSFORMERS
    attn_implementation: ClassVar[str | None] = None  # None: whatever transformers picks for the model
    gpu_dtype: ClassVar[str] = "float16"

    def __init__(self, model: str, **options: Any) -> None:
        super().__init__(model, **options)
        self.dtype_name: str | None = options.get("dtype")
        self.trust_remote_code: bool = bool(options.get("trust_remote_code", False))
        self._model: Any = None
        self._tokenizer: Any = None
        self._device = "cpu"

    # What distinguishes the modes.
    def quantization_config(self, torch: Any) -> Any:
        return None

    def load(self) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.dtype_name is None:
            self.dtype_name = default_dtype(self._device, self.gpu_dtype)
        if self.dtype_name not in DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}")
        path = models.resolve(self.model)
        config = models.load_config(self.model, path, self.trust_remote_code)
        self._context = getattr(config, "max_position_embeddings", None)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=self.trust_remote_code)
        tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
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
            self._model = AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()
        self._tokenizer = tokenizer
        eos = self._model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos])

    def _encode(self, prompts: Sequence[str]) -> Any:
        # A chat template already starts with the BOS text; adding another would change the prompt.
        bos = self._tokenizer.bos_token
        add_special = not (bos and prompts and prompts[0].startswith(bos))
        return self._tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=add_special)

    def count_tokens(self, prompts: Sequence[str]) -> list[int]:
        bos = self._tokenizer.bos_token
        return [len(self._tokenizer(p, add_special_tokens=not (bos and p.startswith(bos)))["input_ids"]) for p in prompts]

    def context_length(self) -> int | None:
        return self._context

    def apply_chat_template(self, texts: Sequence[str]) -> list[str]:
        return chat_prompts(self._tokenizer, texts, self.model, "published-hf")

    def generate_batch(self, prompts: Sequence[str], params: GenerationParams) -> list[Generation]:
        import torch

        enc = self._encode(prompts).to(self._device)
        gen: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "pad_token_id": self._tokenizer.pad_token_id}
        if params.greedy:
            # Chat checkpoints ship sampling defaults; greedy must switch them off explicitly.
            gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            gen.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=None)
            if params.seed is not None:
                torch.manual_seed(params.seed)
        if params.ignore_eos:
            gen["min_new_tokens"] = params.max_new_tokens
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
            text = self._tokenizer.decode(row[:count], skip_special_tokens=True).strip()
            results.append(Generation(text, int(prompt_tokens), count, reason))
        return results

    def synchronize(self) -> None:
        if self._device == "cuda":
            import torch

            torch.cuda.synchronize()

    def close(self) -> None:
        self._model = None
        from llmopt.measure import free_device_memory

        free_device_memory()

    def describe(self) -> dict[str, Any]:
        config = getattr(self._model, "config", None)
        quant = getattr(config, "quantization_config", None)
        return {
            "device": self._device,
            "dtype": self.dtype_name,
            "attn_implementation": getattr(config, "_attn_implementation", None),
            "quantization": quant.to_dict() if hasattr(quant, "to_dict") else quant,
        }


class DefaultStrategy(TransformersStrategy):
    name = "default"
    description = "transformers, fp16 on CUDA (CPU: bf16 where native, else fp32); --dtype float32 is the study's"


class SdpaStrategy(TransformersStrategy):
    name = "sdpa"
    description = "transformers with PyTorch scaled-dot-product attention"
    attn_implementation = "sdpa"


class FlashAttentionStrategy(TransformersStrategy):
    name = "flash-attn"
    description = "transformers with FlashAttention-2, bf16 (needs flash-attn and an Ampere or newer GPU)"
    requires = (*TRANSFORMERS, Requirement("flash_attn", "flash-attn --no-build-isolation"))
    needs_cuda = True
    min_cuda_capability = (8, 0)
    attn_implementation = "flash_attention_2"
    gpu_dtype = "bfloat16"


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
    gpu_dtype = "float16"
