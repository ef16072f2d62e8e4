"""The process group a tensor-parallel artifact's ranks run in.

Every rank runs the same compiled graphs (SPMD); their collectives go over the default process group,
whose name is baked into the graphs. Two ways to get there:

- under torchrun (WORLD_SIZE equal to the artifact's tensor_parallel_size), this process IS one rank:
  the caller runs the same program on every rank, as with any torchrun job;
- otherwise `load_runtime` starts the ranks itself (parallel/ranks.py) and each joins a group whose
  rendezvous is a file in a directory the driver created (no port to pick, none to leak).
"""

from __future__ import annotations

import os
from datetime import timedelta

# How long a collective may wait for a peer. A peer that dies closes its sockets and gloo fails at once;
# this bounds the rest (a peer alive but stuck), so a rank never hangs for gloo's default 30 minutes.
COLLECTIVE_TIMEOUT = timedelta(seconds=120)


def backend_for(device: str) -> str:
    # nccl for CUDA artifacts is what torch recommends; it is not exercised here (no GPU on these machines).
    return "nccl" if device == "cuda" else "gloo"


def joined_world(tp: int, device: str) -> bool:
    """Whether this process is already one rank of a `tp`-rank job (torchrun), joining its group if needed."""
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_world_size() == tp
    env = os.environ
    if env.get("WORLD_SIZE") != str(tp) or "RANK" not in env or "MASTER_ADDR" not in env:
        return False
    dist.init_process_group(backend_for(device), init_method="env://", timeout=COLLECTIVE_TIMEOUT)
    return True


def join_rank_group(store_file: str, rank: int, tp: int, device: str) -> None:
    """Join the group of ranks started by `load_runtime` (called in each rank process)."""
    import torch.distributed as dist

    # Ranks talk over loopback: they run on this machine, and an interface guessed from the hostname may not
    # route back to it in containers.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    store = dist.FileStore(store_file, tp)
    dist.init_process_group(backend_for(device), store=store, rank=rank, world_size=tp, timeout=COLLECTIVE_TIMEOUT)
