"""The numbers of a decoder-only transformer that set its cost: layers, widths, heads, vocabulary. Read from a
transformers config; the roofline and the strategies' summaries use them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """The numbers of a decoder-only transformer with a gated MLP (Llama, Mistral, Qwen2) that set its cost."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, config: Any) -> Architecture:
        heads = config.num_attention_heads
        return cls(
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab=config.vocab_size,
        )

    @property
    def layer_params(self) -> int:
        """Matrix weights of all decoder layers: q, k, v, o projections and gate, up, down."""
        attention = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        return self.layers * (attention + 3 * self.hidden * self.intermediate)

    @property
    def head_params(self) -> int:
        return self.vocab * self.hidden

    def kv_values_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim


def architecture_of(config: Any) -> dict[str, int] | None:
    """The numbers the roofline needs, for a summary, where the model is a Llama-like decoder."""
    if config is None:
        return None
    try:
        return asdict(Architecture.from_config(config))
    except (AttributeError, TypeError):
        return None
