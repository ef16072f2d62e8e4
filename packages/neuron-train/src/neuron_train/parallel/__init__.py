"""Tensor- and sequence-parallel building blocks on torch.distributed."""

from neuron_train.parallel.dims import ParallelDims, init_distributed
from neuron_train.parallel.layers import ColumnParallelLinear, ParallelEmbedding, RowParallelLinear
from neuron_train.parallel.loss import vocab_parallel_cross_entropy

__all__ = [
    "ColumnParallelLinear",
    "ParallelDims",
    "ParallelEmbedding",
    "RowParallelLinear",
    "init_distributed",
    "vocab_parallel_cross_entropy",
]
