"""Sample logprobs the way vLLM's sampler reports them: from the raw logits (before temperature,
top-k and top-p), the sampled token first, then the top-k, with the sampled token's rank."""

from __future__ import annotations

from typing import Any

import torch


def logprobs_lists(rows: list[tuple[torch.Tensor | None, int]], k: int) -> Any:
    """rows: per scheduled request, (raw logits (vocab,) or None when it sampled nothing, token).

    Returns vLLM's LogprobsLists with one row per request ([num_reqs, k + 1] ids and logprobs,
    [num_reqs] ranks); vLLM slices each request's row by its index and keeps its own k.
    """
    from vllm.v1.outputs import LogprobsLists

    n = len(rows)
    ids = torch.zeros(n, k + 1, dtype=torch.int32)
    values = torch.zeros(n, k + 1, dtype=torch.float32)
    ranks = torch.zeros(n, dtype=torch.int64)
    for i, (logits, token) in enumerate(rows):
        if logits is None:
            continue
        lp = logits.float().log_softmax(-1)
        top = lp.topk(k) if k > 0 else None
        ids[i, 0], values[i, 0] = token, lp[token]
        if top is not None:
            ids[i, 1:], values[i, 1:] = top.indices.to(torch.int32), top.values
        ranks[i] = int((lp >= lp[token]).sum())  # 1 = most likely, ties counted like vLLM
    return LogprobsLists(ids.numpy(), values.numpy(), ranks.numpy())
