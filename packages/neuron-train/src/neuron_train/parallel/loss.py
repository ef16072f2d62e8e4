"""Vocabulary-parallel cross-entropy: logits stay sharded over the vocabulary (no all-gather).

Three all-reduces over TP per call: the max (stability), the sum of exponentials, and the target
logit (held by exactly one rank). Backward is local: softmax - one_hot on this rank's slice.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from neuron_train.parallel.comm import all_reduce_

IGNORE_INDEX = -100


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, vocab_start: int, group):
        logits = logits.float()
        local_v = logits.shape[-1]
        logits_max = logits.max(dim=-1).values
        all_reduce_(logits_max, group, dist.ReduceOp.MAX)
        shifted = logits - logits_max.unsqueeze(-1)

        ignore = labels == IGNORE_INDEX
        local = labels - vocab_start
        mine = (local >= 0) & (local < local_v) & ~ignore
        idx = local.masked_fill(~mine, 0)
        target = shifted.gather(-1, idx.unsqueeze(-1)).squeeze(-1).masked_fill(~mine, 0.0)
        all_reduce_(target, group)

        exp = shifted.exp_()  # in place: `shifted` is our own tensor and no longer needed
        sum_exp = exp.sum(dim=-1)
        all_reduce_(sum_exp, group)
        loss = (sum_exp.log() - target).masked_fill(ignore, 0.0)

        ctx.save_for_backward(exp.div_(sum_exp.unsqueeze(-1)), idx, mine, ignore)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        softmax, idx, mine, ignore = ctx.saved_tensors
        g = softmax.clone()  # the saved softmax must survive a second backward (retain_graph)
        g.scatter_add_(-1, idx.unsqueeze(-1), -mine.unsqueeze(-1).to(g.dtype))
        g.mul_((grad.masked_fill(ignore, 0.0)).unsqueeze(-1))
        return g, None, None, None


def vocab_parallel_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, *, vocab_start: int = 0, group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """Per-token loss (0 where labels == -100) for logits (..., V/tp) holding vocab [start, start+V/tp)."""
    if group is None or dist.get_world_size(group) == 1:
        # Whole vocabulary here: torch's fused kernel, the one transformers' loss uses.
        return F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="none").view(labels.shape)
    return _VocabParallelCE.apply(logits, labels, vocab_start, group)
