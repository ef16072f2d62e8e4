"""The artifact's KV cache described to vLLM's scheduler, so that vLLM does its own admission control.

What the artifact has: one contiguous run of `sequence_length` positions per slot (a compiled batch
row), in every layer. vLLM's interface knows paged blocks, so the worker reports each layer as a
full-attention cache of `block_size`-token blocks, and exactly as many blocks as the slots hold:
`batch_size * ceil(sequence_length / block_size)`, plus the one null block vLLM keeps back. vLLM
then never admits more tokens than the slots can hold, preempts instead of overflowing, schedules
long prompts in chunks (chunked prefill) and keeps its prefix-cache block hashes.

vLLM's block ids do not name our rows: the runner maps each request to a slot and its positions to
that slot's rows, and finds reused prefixes in its own PrefixCache (neuron_infer.engine.prefix).
Sliding-window layers are reported as full attention: their rows hold the whole sequence too.
"""

from __future__ import annotations

import math
from typing import Any

from neuron_cache import NeuronConfig

DEFAULT_BLOCK_SIZE = 16  # vLLM's prefix cache hashes whole blocks: small blocks find more shared prefixes

_KINDS = ("k_cache", "v_cache")


def kv_layers(neuron: NeuronConfig) -> dict[str, dict[str, Any]]:
    """Per attention layer of the artifact (by its k_cache/v_cache state names): kv heads, head size, dtype.

    The state shapes are (batch, kv heads of one rank, sequence_length, head_dim); a tensor-parallel
    artifact holds the rest of the heads on its other ranks.
    """
    layers: dict[str, dict[str, Any]] = {}
    for spec in neuron.state:
        prefix, _, kind = spec.name.rpartition(".")
        if kind not in _KINDS or len(spec.shape) != 4:
            continue
        batch, heads, seq, head_dim = spec.shape
        if batch != neuron.batch_size or seq != neuron.sequence_length:
            raise ValueError(f"neuron_config.json state '{spec.name}' has shape {spec.shape}, not (batch_size="
                             f"{neuron.batch_size}, kv heads, sequence_length={neuron.sequence_length}, head_dim); "
                             "re-export the model")
        layers[prefix or kind] = dict(num_kv_heads=heads * neuron.tensor_parallel_size, head_size=head_dim,
                                      dtype=spec.dtype)
    return layers


def blocks_per_slot(neuron: NeuronConfig, block_size: int) -> int:
    return math.ceil(neuron.sequence_length / block_size)


def num_blocks(neuron: NeuronConfig, block_size: int) -> int:
    """Blocks to tell vLLM about: every slot's positions, plus vLLM's null block."""
    return neuron.batch_size * blocks_per_slot(neuron, block_size) + 1


def kv_cache_spec(neuron: NeuronConfig, block_size: int) -> dict[str, Any]:
    """vLLM's per-layer KVCacheSpec for the artifact's cache."""
    import torch
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    return {name: FullAttentionSpec(block_size=block_size, num_kv_heads=layer["num_kv_heads"],
                                    head_size=layer["head_size"], dtype=getattr(torch, layer["dtype"]))
            for name, layer in kv_layers(neuron).items()}


def kv_cache_bytes(neuron: NeuronConfig, block_size: int) -> int:
    """The memory vLLM's block count stands for (its null block included), in vLLM's own page sizes."""
    spec = kv_cache_spec(neuron, block_size)
    return num_blocks(neuron, block_size) * sum(s.page_size_bytes for s in spec.values())
