"""Does the batch a cell ran at change its drift? (a script that prints numbers, not a test)

`llmopt drift` scores each document alone, teacher-forced; a cell at batch 8 computes over left-padded batches. This
scores the float32 reference's own greedy summaries of the first documents both ways, at each dtype, and prints the
KL (reference || mode) over the full vocabulary, mean and p99 over positions, and the top-1 agreement, each way, and
the KL between the two ways. Where the two ways give the same KL against the reference, but not the same
distributions, the batch changes which roundings happen, not how large they are (docs/quality.md).

    .venv/bin/python scripts/drift_batch_padding.py [--model smollm2-135m] [--docs 4] [--batch 8] [--tokens 64]
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmopt.documents.datasets import load_dataset
from llmopt.documents.prompts import PROMPTS
from llmopt.models import packaged

Sequence = tuple[list[int], list[int]]  # a prompt's token ids, and the reference's summary of it


def log_probs_alone(model: torch.nn.Module, pairs: list[Sequence]) -> list[torch.Tensor]:
    """Each document in a forward pass of its own: the distribution at every position of its summary."""
    out = []
    for prompt, summary in pairs:
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt + summary])).logits[0]
        out.append(torch.log_softmax(logits[len(prompt) - 1 : len(prompt) + len(summary) - 1].float(), -1))
    return out


def log_probs_padded(model: torch.nn.Module, pairs: list[Sequence], pad: int) -> list[torch.Tensor]:
    """All documents in one left-padded batch, as a cell's generation batches them."""
    texts = [prompt + summary for prompt, summary in pairs]
    width = max(map(len, texts))
    ids = torch.tensor([[pad] * (width - len(t)) + t for t in texts])
    mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in texts])
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits
    out = []
    for row, (_, summary) in enumerate(pairs):
        start = width - len(summary) - 1  # the position that predicts the summary's first token
        out.append(torch.log_softmax(logits[row, start : start + len(summary)].float(), -1))
    return out


def kl(p: list[torch.Tensor], q: list[torch.Tensor]) -> torch.Tensor:
    """KL(p || q) at every position of every document, in nats."""
    return torch.cat([(a.exp() * (a - b)).sum(-1) for a, b in zip(p, q, strict=True)])


def top1(p: list[torch.Tensor], q: list[torch.Tensor]) -> float:
    return torch.cat([(a.argmax(-1) == b.argmax(-1)).float() for a, b in zip(p, q, strict=True)]).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="a packaged model (models/packaged.py)")
    parser.add_argument("--docs", type=int, default=4, help="documents measured (the first of the batch)")
    parser.add_argument("--batch", type=int, default=8, help="documents in the padded batch")
    parser.add_argument("--tokens", type=int, default=64, help="length of the reference's greedy summaries")
    args = parser.parse_args()
    torch.manual_seed(0)
    folder = packaged.checkpoint(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    documents = [d for d in load_dataset("sample") if d.document.strip()][: args.batch]
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    pairs: list[Sequence] = []
    for d in documents:
        chat = [{"role": "user", "content": PROMPTS["chat"](d.document)}]
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.inference_mode():
            generated = reference.generate(ids, max_new_tokens=args.tokens, do_sample=False)
        pairs.append((ids[0].tolist(), generated[0, ids.shape[1] :].tolist()))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    measured = pairs[: args.docs]
    ref = log_probs_alone(reference, measured)
    print(f"{args.model}: {len(measured)} documents x {args.tokens} tokens, padded batch of {len(pairs)}")
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        alone = log_probs_alone(model, measured)
        padded = log_probs_padded(model, pairs, pad)[: len(measured)]
        k_alone, k_padded, k_between = kl(ref, alone), kl(ref, padded), kl(alone, padded)
        print(f"{str(dtype).removeprefix('torch.')}: against float32 alone: KL mean {k_alone.mean():.4g} "
              f"p99 {k_alone.quantile(0.99):.4g} top-1 {top1(ref, alone):.3f}; padded: KL mean {k_padded.mean():.4g} "
              f"p99 {k_padded.quantile(0.99):.4g} top-1 {top1(ref, padded):.3f}; alone against padded: KL mean "
              f"{k_between.mean():.4g} p99 {k_between.quantile(0.99):.4g}")  # fmt: skip


if __name__ == "__main__":
    main()
