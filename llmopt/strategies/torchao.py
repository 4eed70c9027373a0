"""PyTorch's own quantization (torchao) through transformers' TorchAoConfig: int8 and int4 weight-only, and FP8
weights and activations.

int4 on a GPU is torchao's Int4WeightOnlyConfig (tinygemm, packed two to a byte), which needs compute capability 8.0
(its packing and matmul are built for sm80 and compute in bfloat16): an older GPU (T4, V100) is refused as unavailable.
torchao has no packed int4 kernel for CPUs: there, the int4 values are stored one per byte (IntxWeightOnlyConfig), so
the quality effect of int4 is real while the memory and speed are those of int8; the summary says so (`storage`). FP8
needs compute capability 8.9 or newer (Ada, Hopper).

int8 runs eagerly, as transformers leaves it: torchao 0.18's Int8Tensor linear (per-row scales, weight-only) converts
the whole int8 weight to the activations' dtype at every call (`qdata.t().to(dtype)`), multiplies, then scales the
output. Only torch.compile fuses that conversion into the matmul; eager, each call reads the int8 weight, writes a
16-bit copy and reads it again, more bytes than the 16-bit model itself. The summary says so (`execution`), and the
roofline counts those bytes, so the row reads as what it is, not as a slow int8 kernel.
"""

from __future__ import annotations

from typing import Any, ClassVar

from llmopt.errors import StrategyUnavailable
from llmopt.strategies.base import Requirement
from llmopt.strategies.hf import TRANSFORMERS, TransformersStrategy

TORCHAO = Requirement("torchao", "torchao")


class TorchAoStrategy(TransformersStrategy):
    requires = (*TRANSFORMERS, TORCHAO)
    storage: ClassVar[str] = ""

    def torchao_config(self, torch: Any) -> Any:
        raise NotImplementedError

    def quantization_config(self, torch: Any) -> Any:
        from transformers import TorchAoConfig

        return TorchAoConfig(quant_type=self.torchao_config(torch))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "quantization": f"torchao-{self.name.removeprefix('torchao-')}",
                "storage": self.storage_note(), "weights_bytes": self._weights_bytes()}  # fmt: skip

    def storage_note(self) -> str:
        return self.storage

    def _weights_bytes(self) -> int | None:
        """Bytes of the loaded weights as torchao stores them (its tensor subclasses hold the quantized data)."""
        if self._model is None:
            return None
        total = 0
        for param in self._model.parameters():
            inner = getattr(param, "__tensor_flatten__", None)
            if inner is None:
                total += param.numel() * param.element_size()
                continue
            names, _ = inner()
            total += sum(getattr(param, n).numel() * getattr(param, n).element_size() for n in names)
        return total


class TorchAoInt8Strategy(TorchAoStrategy):
    name = "torchao-int8"
    description = "torchao int8 weight-only quantization (per-channel scales), eager: weights converted at every call"
    storage = "int8, one per byte"

    def torchao_config(self, torch: Any) -> Any:
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "execution": EAGER_INT8}


EAGER_INT8 = (
    "eager: each matmul converts the int8 weight to the compute dtype (a full copy written and read again) and "
    "multiplies in 16 bits; no fused int8 kernel (torchao's needs torch.compile)"
)


def int4_capability_problem(capability: tuple[int, int] | None) -> str | None:
    """Why `torchao-int4` cannot run on a CUDA GPU of this compute capability, or None (None: no CUDA GPU; the CPU
    path stores int4 one per byte and needs no kernel of tinygemm's)."""
    if capability is None or capability >= INT4_MIN_CAPABILITY:
        return None
    want, have = ".".join(map(str, INT4_MIN_CAPABILITY)), ".".join(map(str, capability))
    return (f"torchao's int4 kernel (tinygemm, tile-packed, bfloat16) needs a GPU of compute capability {want} or newer; "
            f"this one is {have}")  # fmt: skip


INT4_MIN_CAPABILITY = (8, 0)


class TorchAoInt4Strategy(TorchAoStrategy):
    name = "torchao-int4"
    description = "torchao int4 weight-only quantization, groups of 128 (on a CPU: int4 values stored one per byte)"
    cuda_dtype = "bfloat16"  # tinygemm's int4 matmul takes bf16 activations only

    @classmethod
    def hardware_problem(cls) -> str | None:
        from llmopt.strategies import cuda_capability

        return int4_capability_problem(cuda_capability())

    def torchao_config(self, torch: Any) -> Any:
        if self._device == "cuda":
            from torchao.quantization import Int4WeightOnlyConfig

            if problem := int4_capability_problem(torch.cuda.get_device_capability(0)):
                raise StrategyUnavailable(f"strategy {self.name!r} cannot run here: {problem}")

            # tinygemm's tile-packed layout, whose kernel ships with PyTorch; torchao's default ("plain") needs
            # the separate fbgemm-gpu-genai package.
            return Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d")
        from torchao.quantization import IntxWeightOnlyConfig
        from torchao.quantization.granularity import PerGroup

        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))

    def storage_note(self) -> str:
        if self._device == "cuda":
            return "int4, two per byte (tinygemm), groups of 128"
        return "int4 values one per byte (torchao has no packed int4 CPU kernel), groups of 32"


class TorchAoFp8Strategy(TorchAoStrategy):
    name = "torchao-fp8"
    description = "torchao FP8 weights and dynamic FP8 activations, per row (needs an Ada or Hopper GPU)"
    needs_cuda = True
    min_cuda_capability = (8, 9)
    storage = "float8 e4m3, one per byte, per-row scales"
    cuda_dtype = "bfloat16"  # row-wise scaled FP8 matmuls (torch._scaled_mm) produce bf16

    def torchao_config(self, torch: Any) -> Any:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
