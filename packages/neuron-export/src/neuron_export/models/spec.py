"""The compiled shapes of a static-shape export (the architecture itself is described in neuron_cache.arch)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    # Of those ranks, groups that each hold num_experts / expert_parallel_size whole experts (models/moe.py).
    expert_parallel_size: int = 1

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
