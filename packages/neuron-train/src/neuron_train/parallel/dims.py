"""Process layout for tensor x data parallelism on torch.distributed.

Backends: gloo on CPU, nccl on CUDA. On AWS Neuron the same layout would come from
neuronx-distributed's `parallel_state` (XLA process groups); that stack is not installed here, so
`init_distributed` raises for it rather than pretending.

Rank layout: tensor-parallel ranks are adjacent (rank = dp_rank * tp + tp_rank), so a TP group
shares a host whenever tp divides the per-host process count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


def default_backend() -> str:
    """gloo on CPU, nccl when CUDA is present."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(backend: str | None = None) -> None:
    """Initialise the default process group from torchrun's environment (idempotent).

    Without torchrun (no WORLD_SIZE in the environment) this does nothing: a single process runs
    with tp=1, dp=1 and every collective short-circuits.
    """
    if dist.is_initialized() or "WORLD_SIZE" not in os.environ:
        return
    backend = backend or default_backend()
    if backend in ("xla", "neuron"):
        raise NotImplementedError(
            f"backend={backend!r}: Neuron process groups come from neuronx-distributed, which is not "
            "available in this environment; use 'gloo' (CPU) or 'nccl' (CUDA)."
        )
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)


@dataclass(kw_only=True)
class ParallelDims:
    """The tp x dp layout of this process and its process groups.

    A group is None when its size is 1: communication ops treat None as "nothing to do", which is
    what lets the same model code run in a plain single process.
    """

    tp: int = 1
    dp: int = 1
    rank: int = 0
    tp_rank: int = 0
    dp_rank: int = 0
    tp_group: dist.ProcessGroup | None = None
    dp_group: dist.ProcessGroup | None = None
    _kv_groups: dict[int, dist.ProcessGroup | None] = field(default_factory=dict, repr=False)

    @property
    def world_size(self) -> int:
        return self.tp * self.dp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def local(cls) -> ParallelDims:
        """tp=1, dp=1 in this process, whatever the world around it (used for reference runs)."""
        return cls()

    @classmethod
    def build(cls, tp: int = 1) -> ParallelDims:
        """Create the TP and DP groups; every rank must call this with the same `tp`."""
        init_distributed()
        world = dist.get_world_size() if dist.is_initialized() else 1
        rank = dist.get_rank() if dist.is_initialized() else 0
        if tp < 1 or world % tp != 0:
            raise ValueError(
                f"tensor_parallel_size={tp} must be >= 1 and divide the world size {world}; "
                f"launch with `torchrun --nproc_per_node N` where N is a multiple of {tp}, or lower tensor_parallel_size."
            )
        dp = world // tp
        dims = cls(tp=tp, dp=dp, rank=rank, tp_rank=rank % tp, dp_rank=rank // tp)
        # new_group is collective over the whole world: every rank creates every group in the same order.
        if tp > 1:
            for d in range(dp):
                g = dist.new_group(list(range(d * tp, (d + 1) * tp)))
                if d == dims.dp_rank:
                    dims.tp_group = g
        if dp > 1:
            for t in range(tp):
                g = dist.new_group(list(range(t, world, tp)))
                if t == dims.tp_rank:
                    dims.dp_group = g
        return dims

    def kv_replica_group(self, num_kv_heads: int) -> dist.ProcessGroup | None:
        """Group of TP ranks holding copies of the same kv head (only when tp > num_kv_heads).

        Replicated kv heads each see gradients from their own query heads only; summing over this
        group gives the full gradient and keeps the copies identical. Collective on first call.
        """
        if self.tp <= num_kv_heads:
            return None
        if num_kv_heads not in self._kv_groups:
            rep = self.tp // num_kv_heads
            mine = None
            for d in range(self.dp):
                for h in range(num_kv_heads):
                    ranks = [d * self.tp + h * rep + i for i in range(rep)]
                    g = dist.new_group(ranks)
                    if self.rank in ranks:
                        mine = g
            self._kv_groups[num_kv_heads] = mine
        return self._kv_groups[num_kv_heads]
