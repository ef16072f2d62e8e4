"""Typed descriptions of a static-shape decoder: its architecture and its compiled shapes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(kw_only=True, slots=True)
class DecoderArch:
    """Everything about a Llama-family transformer that changes the graph (not the weights).

    Each architecture file builds one of these from a Hugging Face config; the modules in
    `llama.py` read nothing else.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    hidden_act: str = "silu"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # qwen3: RMSNorm over head_dim on q and k, before rope
    tie_word_embeddings: bool = False
    rotary_dim: int | None = None  # None: the whole head_dim is rotated
    rope_layers: list[bool] | None = None  # smollm3: False marks a NoPE layer; None: rope everywhere
    sliding_windows: list[int | None] | None = None  # per layer; None: full causal attention
    attention_scale: float | None = None  # None: head_dim ** -0.5 (granite: attention_multiplier)
    embedding_multiplier: float = 1.0  # granite
    residual_multiplier: float = 1.0  # granite
    logits_divisor: float = 1.0  # granite: logits_scaling

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_kv_heads}) for grouped-query attention"
            )

    @property
    def scale(self) -> float:
        return self.attention_scale if self.attention_scale is not None else self.head_dim**-0.5

    def uses_rope(self, layer: int) -> bool:
        return self.rope_layers is None or self.rope_layers[layer]

    def sliding_window(self, layer: int) -> int | None:
        return None if self.sliding_windows is None else self.sliding_windows[layer]


@dataclass(kw_only=True, slots=True)
class StaticShapes:
    """The compiled shapes: slots, KV-cache length, prompt buckets, dtype, sampling."""

    batch_size: int
    sequence_length: int
    context_buckets: list[int]
    dtype: str = "float32"
    on_device_sampling: bool = False
    max_topk: int = 256
    # Extra token-generation graphs over a subset of the slots (seq_ids input), each smaller than
    # batch_size: with few live sequences, a step costs what those rows cost, not the whole batch.
    decode_batches: list[int] = field(default_factory=list)
    # Extra token-generation graphs (for every row count) attending over only the first `b` cache positions,
    # each below sequence_length: a step whose every live position is below b reads b positions of the KV
    # cache, not sequence_length (NxDI's token-generation buckets).
    kv_buckets: list[int] = field(default_factory=list)
    # Chunked-prefill graphs, one per chunk length: a chunk of a prompt at any offset of a slot's KV cache (prompts
    # longer than max_context_length, prefix reuse, a prompt scheduled over several steps).
    chunk_buckets: list[int] = field(default_factory=list)
    # Ranks the graphs run on: each graph is one rank's share with its collectives inside (models/parallel.py).
    tensor_parallel_size: int = 1

    @property
    def max_context_length(self) -> int:
        return self.context_buckets[-1]


@dataclass(kw_only=True, slots=True)
class EncoderShapes:
    """The compiled shapes of an encoder export: one graph per (batch bucket, sequence bucket) pair, and what the
    model is built for (its task and pooling), so that a compile worker builds the same module from the config."""

    batch_buckets: list[int]
    sequence_buckets: list[int]
    task: str
    pooling: str | None = None
    dtype: str = "float32"
    tensor_parallel_size: int = 1  # encoders run on one rank (compile_worker's tracing world reads this)

    @property
    def batch_size(self) -> int:
        return self.batch_buckets[-1]

    @property
    def sequence_length(self) -> int:
        return self.sequence_buckets[-1]
