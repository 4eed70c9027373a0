"""Tiny random Llama-shaped checkpoints for the demo and the tests: no download, real code paths.

`--model tiny` / `--model tiny-small` build into the cache folder once and reuse it (`llmopt tiny OUT` writes one
anywhere). Head size is 64 because vLLM's CPU attention needs it. Outputs are gibberish: the weights are random.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from llmopt.files import build_once
from llmopt.paths import DATA_DIR, cache_dir

BUILD_VERSION = 1  # bump when the recipe changes, so cached copies are rebuilt


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


@dataclass(frozen=True)
class TinyShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 2048


SHAPES: dict[str, TinyShape] = {
    "tiny": TinyShape(128, 256, 2, 2, 2),  # about 1M parameters, a few MB
    "small": TinyShape(512, 1536, 7, 8, 8),  # about 25M parameters
}


# alias -> (size, packing); packed variants hold the same random weights as their unpacked size.
ALIASES: dict[str, tuple[str, str | None]] = {
    "tiny": ("tiny", None),
    "tiny-small": ("small", None),
    "tiny-awq": ("tiny", "awq"),
    "tiny-gptq": ("tiny", "gptq"),
}


GROUP_SIZE = 64


QUANT_CONFIGS = {
    "awq": {"quant_method": "awq", "bits": 4, "group_size": GROUP_SIZE, "zero_point": True, "version": "gemm"},
    "gptq": {
        "quant_method": "gptq", "bits": 4, "group_size": GROUP_SIZE, "desc_act": False, "sym": True,
        "damp_percent": 0.01, "true_sequential": True, "static_groups": False, "checkpoint_format": "gptq",
    },
}  # fmt: skip


LINEAR_SUFFIXES = tuple(f"{m}.weight" for m in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))


def train_tokenizer(out: Path, vocab_size: int = 4096) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for line in (DATA_DIR / "sample.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        texts += [row["document"], row["summary"]]
    texts.append("Summarize the above text in 1-3 sentences. Document: Summary of the above Document:")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte encodes: no unknown text
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=2048
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(out)


def build(out: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random checkpoint of `size` with its tokenizer into `out`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    shape = SHAPES[size]
    out.mkdir(parents=True, exist_ok=True)
    train_tokenizer(out)
    tok = AutoTokenizer.from_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
        **asdict(shape),
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    (out / "llmopt_tiny.json").write_text(json.dumps({"size": size, "seed": seed, "version": BUILD_VERSION}))
    return out


def pack(src: Path, out: Path, packing: str) -> Path:
    """Write `src`'s decoder linear layers in the AWQ (GEMM) or GPTQ 4-bit layout; other weights in fp16."""
    import torch
    from safetensors.torch import load_file, save_file

    from llmopt.models import quantpack

    quantize = quantpack.quantize_awq if packing == "awq" else quantpack.quantize_gptq
    tensors: dict[str, torch.Tensor] = {}
    for name, weight in load_file(src / "model.safetensors").items():
        if name.endswith(LINEAR_SUFFIXES):
            prefix = name.removesuffix("weight")
            tensors.update({prefix + key: t.contiguous() for key, t in quantize(weight, GROUP_SIZE).items()})
        else:
            tensors[name] = weight.to(torch.float16).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config.update(quantization_config=QUANT_CONFIGS[packing], torch_dtype="float16", dtype="float16")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    if (src / "llmopt_tiny.json").is_file():  # a tiny model's own marker; other checkpoints (packaged.py) keep theirs
        marker = json.loads((src / "llmopt_tiny.json").read_text())
        (out / "llmopt_tiny.json").write_text(json.dumps({**marker, "packing": packing, "group_size": GROUP_SIZE}))
    return out


def ensure(alias: str) -> Path:
    """The cached checkpoint for a `--model` alias such as `tiny` or `tiny-awq`, built on first use."""
    size, packing = ALIASES[alias]
    root = cache_dir() / "tiny"
    name = f"{size}-{packing}" if packing else size
    target = root / f"{name}-v{BUILD_VERSION}"
    if (target / "llmopt_tiny.json").is_file():
        return target
    source = ensure("tiny-small" if size == "small" else "tiny") if packing else None

    def make(staging: Path) -> None:
        if source is not None and packing is not None:
            pack(source, staging, packing)
        else:
            build(staging, size)

    return build_once(target, "llmopt_tiny.json", make)  # parallel test processes build it once
