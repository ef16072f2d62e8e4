"""Tensor parallelism inside the graphs: what one rank computes, and the collectives between ranks.

A tensor-parallel artifact holds ONE graph per role and bucket, run by every rank (SPMD, as a Neuron
NEFF is): the shapes are a rank's shapes, the collectives are part of the graph (functional
all_reduces over the default process group, which AOTInductor compiles into the package
and runs over gloo on CPU), and everything that differs between ranks is a constant in that rank's
weights file. Megatron's layout:

- q/k/v and gate/up are column-parallel (each rank holds whole heads / a slice of the intermediate),
  o_proj and down_proj row-parallel: their partial outputs are summed by one all_reduce each. Their
  biases are held by rank 0 only (zeros elsewhere), so the sum adds them once.
- with more ranks than kv heads, each kv head is replicated on tp / num_kv_heads ranks, next to the
  q heads of its group.
- the embedding is vocabulary-parallel: rank r holds rows [r*s, (r+1)*s) of the vocabulary
  (s = ceil(vocab / tp), padded with zero rows) plus one zero row; `local_ids` maps every token id to
  its row on this rank, or to the zero row, and an all_reduce sums the ranks' lookups. The lm_head
  uses the same rows (tied or not); its logits are spread over the vocabulary through the same map and
  summed by one more all_reduce (`gather_vocab` says why not an all_gather).

At tensor_parallel_size 1 none of this is in the graph: those graphs are exactly the single-device ones.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import replace

import torch

from neuron_cache.arch.spec import DecoderArch


class TensorParallelError(ValueError):
    """A model whose shapes do not split over the requested number of ranks."""


def rank_arch(arch: DecoderArch, tp: int, ep: int = 1) -> DecoderArch:
    """The architecture one rank runs: its share of the heads, kv heads and intermediate sizes (with expert
    parallelism ep, each expert's hidden dimension splits over the tp / ep ranks of its group; num_experts stays the
    model's, which the replicated router scores)."""
    check_expert_parallel(arch, tp, ep)
    if tp == 1:
        return arch
    fix = "choose a --tensor_parallel_size that divides it"
    if arch.num_heads % tp:
        raise TensorParallelError(f"num_attention_heads={arch.num_heads} does not split over tensor_parallel_size={tp} "
                                  f"(every rank needs whole heads); {fix}")
    if arch.num_kv_heads % tp and tp % arch.num_kv_heads:
        raise TensorParallelError(
            f"num_key_value_heads={arch.num_kv_heads} and tensor_parallel_size={tp}: one must divide the other (more "
            f"ranks than kv heads replicate each kv head over tp / num_key_value_heads ranks); {fix}"
        )
    dense = not all(arch.is_moe_layer(i) for i in range(arch.num_layers))
    if dense and arch.intermediate_size % tp:
        raise TensorParallelError(f"intermediate_size={arch.intermediate_size} does not split over "
                                  f"tensor_parallel_size={tp}; {fix}")
    moe = {}
    if arch.num_experts:
        moe = {"moe_intermediate_size": arch.expert_intermediate_size // (tp // ep)}
    return replace(arch, num_heads=arch.num_heads // tp, num_kv_heads=max(1, arch.num_kv_heads // tp),
                   intermediate_size=arch.intermediate_size // tp if dense else arch.intermediate_size, **moe)


def check_expert_parallel(arch: DecoderArch, tp: int, ep: int) -> None:
    """Expert parallelism: ep groups of tp / ep ranks, each group holding num_experts / ep whole experts, each
    expert's hidden dimension split over its group's ranks (all tp ranks at ep 1)."""
    if ep != 1:
        if not arch.num_experts:
            raise TensorParallelError(f"expert_parallel_size={ep}: model type {arch.model_type} has no routed experts; "
                                      "use --expert_parallel_size 1 (the default)")
        if ep < 1 or tp % ep:
            raise TensorParallelError(f"expert_parallel_size={ep} must divide tensor_parallel_size={tp} (ep groups of "
                                      "tp / ep ranks); choose a divisor of --tensor_parallel_size")
        if arch.num_experts % ep:
            raise TensorParallelError(f"expert_parallel_size={ep} does not divide num_experts={arch.num_experts} "
                                      "(every group holds whole experts); choose an --expert_parallel_size that divides it")
    ranks = tp // ep
    if arch.num_experts and arch.expert_intermediate_size % ranks:
        raise TensorParallelError(
            f"moe_intermediate_size={arch.expert_intermediate_size} (each expert's hidden size) does not split over the "
            f"tp / ep = {ranks} ranks of an expert group (tensor_parallel_size={tp}, expert_parallel_size={ep}); choose "
            "a --tensor_parallel_size, or an --expert_parallel_size leaving fewer ranks per group, that divides it"
        )


def vocab_shard_rows(vocab_size: int, tp: int) -> int:
    """Vocabulary rows each rank owns (the last rank's share is padded with zero rows)."""
    return math.ceil(vocab_size / tp)


def local_token_rows(vocab_size: int, tp: int, rank: int) -> torch.Tensor:
    """For every token id, its row in `rank`'s embedding shard, or the zero row (index s) if another rank owns it."""
    s = vocab_shard_rows(vocab_size, tp)
    ids = torch.arange(vocab_size, dtype=torch.long)
    local = ids - rank * s
    return torch.where((local >= 0) & (local < s), local, torch.full_like(local, s))


def group_name() -> str:
    """The default process group's name, baked into the graph's collectives. Every rank's default group has
    the same name, so one compiled graph serves all ranks."""
    import torch.distributed as dist

    return dist.group.WORLD.group_name


def all_reduce(x: torch.Tensor, tp: int) -> torch.Tensor:
    if tp == 1:
        return x
    from torch.distributed import _functional_collectives as funcol

    return funcol.all_reduce(x, "sum", group_name())


def gather_vocab(logits: torch.Tensor, local_ids: torch.Tensor, tp: int) -> torch.Tensor:
    """Each rank's (B, s + 1) logits over its vocabulary rows and its zero row -> (B, vocab) on every rank.

    Every rank spreads its logits over the whole vocabulary through its token map (ids another rank owns read
    the zero row, whose logit is exactly 0) and one all_reduce sums them: each id gets its own rank's logit plus
    zeros, bit for bit. Not an all_gather: AOTInductor runs all_gather through its proxy executor, whose tensors
    the gloo worker thread then frees holding gloo's queue lock while it waits for the GIL, and the rank's main
    thread waits on that lock in its next collective (a deadlock seen under vLLM). The all_reduce's own buffer
    is never the graph's output (`[:, :vocab]` of a wider one is a view of it, never it): an output is handed to
    Python, and the same late free would then need the GIL too.
    """
    if tp == 1:
        return logits
    B, vocab = logits.shape[0], local_ids.shape[0]
    spread = logits.new_zeros(B, vocab + 1)
    spread[:, :vocab] = logits.index_select(1, local_ids)
    return all_reduce(spread, tp)[:, :vocab]


@contextlib.contextmanager
def tracing_world(tp: int) -> Iterator[None]:
    """A process group of `tp` fake ranks while graphs are traced: collectives need a group of the right size
    to be traced, not peers (nothing runs). A group that already exists (an export under torchrun) must have
    that size, since the graph bakes in its name."""
    if tp == 1:
        yield
        return
    import torch.distributed as dist

    if dist.is_initialized():
        if dist.get_world_size() != tp:
            raise TensorParallelError(
                f"this process already belongs to a process group of {dist.get_world_size()} ranks; a "
                f"tensor_parallel_size={tp} export traces its graphs in a group of {tp}. Run the export outside "
                "torchrun (it needs no peers)"
            )
        yield
        return
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=tp)
    try:
        yield
    finally:
        dist.destroy_process_group()
