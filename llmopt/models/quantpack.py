"""4-bit AWQ (GEMM) and GPTQ packings of a linear weight, and their reference dequantizers.

The tiny checkpoints use these so that vLLM's real AWQ and GPTQ kernels run without a download. The
quantization is round-to-nearest per group (no calibration data exists here); what matters for the tests
is that the tensors are laid out exactly as AutoAWQ and AutoGPTQ checkpoints lay them out:

AWQ GEMM:  qweight int32 [in, out/8], 8 output columns per word in the interleaved order
           0,2,4,6,1,3,5,7; qzeros int32 [in/G, out/8] packed the same way; scales fp16 [in/G, out].
           w = (q - zero) * scale, asymmetric.
GPTQ v1:   qweight int32 [in/8, out], 8 input rows per word in order; qzeros int32 [in/G, out/8] holding
           zero - 1 (the v1 convention); scales fp16 [in/G, out]; g_idx int32 [in]. Symmetric: zero = 8.
"""

from __future__ import annotations

from typing import Any

BITS = 4
PER_WORD = 32 // BITS
MAX_Q = 2**BITS - 1
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a word holds column AWQ_ORDER[i]


def _check(weight: Any, group_size: int) -> tuple[int, int]:
    out_features, in_features = weight.shape
    if in_features % group_size or out_features % PER_WORD or in_features % PER_WORD:
        raise ValueError(f"weight {tuple(weight.shape)} does not split into groups of {group_size} and words of 8")
    return out_features, in_features


def _pack_columns(values: Any, order: tuple[int, ...]) -> Any:
    """[rows, cols] of 4-bit ints -> [rows, cols/8] int32, word nibble i taking column order[i] of each 8."""
    import torch

    rows, cols = values.shape
    grouped = values.to(torch.int64).reshape(rows, cols // PER_WORD, PER_WORD)[:, :, list(order)]
    shifts = torch.arange(PER_WORD, dtype=torch.int64) * BITS
    words = (grouped << shifts).sum(dim=-1)
    return _as_int32(words)


def _as_int32(words: Any) -> Any:
    import torch

    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _unpack_columns(words: Any, order: tuple[int, ...]) -> Any:
    import torch

    shifts = torch.arange(PER_WORD, dtype=torch.int64) * BITS
    nibbles = (words.to(torch.int64).unsqueeze(-1) >> shifts) & MAX_Q  # [rows, cols/8, 8] by nibble
    inverse = [order.index(c) for c in range(PER_WORD)]
    return nibbles[:, :, inverse].reshape(words.shape[0], -1)


def quantize_awq(weight: Any, group_size: int) -> dict[str, Any]:
    """torch Linear weight [out, in] -> AWQ GEMM tensors (asymmetric, zero point per group)."""
    import torch

    out_features, in_features = _check(weight, group_size)
    w = weight.detach().to(torch.float32).t().reshape(in_features // group_size, group_size, out_features)
    w_min = w.amin(dim=1).clamp(max=0)
    w_max = w.amax(dim=1).clamp(min=0)
    scales = ((w_max - w_min) / MAX_Q).clamp(min=1e-8).to(torch.float16)
    zeros = torch.round(-w_min / scales.float()).clamp(0, MAX_Q).to(torch.int64)
    q = torch.round(w / scales.float().unsqueeze(1)) + zeros.unsqueeze(1)
    q = q.clamp(0, MAX_Q).to(torch.int64).reshape(in_features, out_features)
    return {
        "qweight": _pack_columns(q, AWQ_ORDER),
        "qzeros": _pack_columns(zeros, AWQ_ORDER),
        "scales": scales,
    }


def dequantize_awq(tensors: dict[str, Any], group_size: int) -> Any:
    """AWQ GEMM tensors -> float32 weight [out, in]."""
    q = _unpack_columns(tensors["qweight"], AWQ_ORDER)
    zeros = _unpack_columns(tensors["qzeros"], AWQ_ORDER)
    scales = tensors["scales"].float()
    groups = q.shape[0] // group_size
    w = (q.reshape(groups, group_size, -1) - zeros.unsqueeze(1)) * scales.unsqueeze(1)
    return w.reshape(q.shape[0], -1).t().contiguous()


def quantize_gptq(weight: Any, group_size: int) -> dict[str, Any]:
    """torch Linear weight [out, in] -> GPTQ v1 tensors, symmetric 4-bit (zero 8), no act-order."""
    import torch

    out_features, in_features = _check(weight, group_size)
    w = weight.detach().to(torch.float32).t().reshape(in_features // group_size, group_size, out_features)
    zero = (MAX_Q + 1) // 2
    scales = (2 * w.abs().amax(dim=1) / MAX_Q).clamp(min=1e-8).to(torch.float16)
    q = (torch.round(w / scales.float().unsqueeze(1)) + zero).clamp(0, MAX_Q).to(torch.int64)
    q = q.reshape(in_features, out_features)
    # Rows are packed: word k holds input rows 8k..8k+7, row 8k+i in nibble i.
    qweight = _pack_columns(q.t().contiguous(), tuple(range(PER_WORD))).t().contiguous()
    stored_zeros = torch.full((in_features // group_size, out_features), zero - 1, dtype=torch.int64)
    return {
        "qweight": qweight,
        "qzeros": _pack_columns(stored_zeros, tuple(range(PER_WORD))),
        "scales": scales,
        "g_idx": torch.arange(in_features, dtype=torch.int32) // group_size,
    }


def dequantize_gptq(tensors: dict[str, Any]) -> Any:
    """GPTQ v1 tensors -> float32 weight [out, in]."""
    order = tuple(range(PER_WORD))
    q = _unpack_columns(tensors["qweight"].t().contiguous(), order).t()  # [in, out]
    zeros = _unpack_columns(tensors["qzeros"], order) + 1  # v1 stores zero - 1
    g_idx = tensors["g_idx"].long()
    w = (q - zeros[g_idx]) * tensors["scales"].float()[g_idx]
    return w.t().contiguous()
