"""How a batch of any size and padding becomes calls of fixed-shape encoder graphs, and back.

The graphs take (rows, bucket) int64 inputs, assume right padding, and come in a few batch and sequence
buckets. A caller's (n, L) batch is
1. re-packed to right padding (each row's real tokens, in order, first), so left-padded input works;
2. sorted by length, longest first, so that rows of like length share a chunk and its sequence bucket;
3. cut into chunks of the largest batch bucket (the tail: the smallest batch bucket that holds it), each padded
   to the smallest sequence bucket holding its longest row; extra rows get the pad token and a 1 in column 0
   of attention_mask (a row that attends to nothing is NaN in some models);
4. run, and the outputs put back in the caller's row order and, per token, at the caller's positions.
Padding positions of per-token outputs hold 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# Outputs with one value per token, (rows, bucket, ...); every other output has one per row.
PER_TOKEN_OUTPUTS = ("last_hidden_state", "start_logits", "end_logits")
# `logits` is per token for these tasks, per row (rows, num_labels) for text-classification.
PER_TOKEN_LOGITS_TASKS = ("fill-mask", "token-classification")


def is_per_token(task: str, output: str) -> bool:
    return output in PER_TOKEN_OUTPUTS or (output == "logits" and task in PER_TOKEN_LOGITS_TASKS)


@dataclass(frozen=True, slots=True)
class Chunk:
    rows: list[int]  # the caller's row indices this call holds, in order
    graph_rows: int  # the batch bucket of the graph (>= len(rows))
    bucket: int  # the sequence bucket (>= every row's length)


def plan_chunks(lengths: list[int], batch_buckets: list[int], context_buckets: list[int]) -> list[Chunk]:
    """The graph calls that encode rows of these lengths: longest rows first, the largest batch bucket for the
    bulk, the smallest batch bucket that holds the tail."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    largest = batch_buckets[-1]
    chunks = []
    for start in range(0, len(order), largest):
        rows = order[start:start + largest]
        graph_rows = min(r for r in batch_buckets if r >= len(rows))
        longest = max(lengths[i] for i in rows)
        bucket = min(b for b in context_buckets if b >= longest)  # callers checked longest <= the largest bucket
        chunks.append(Chunk(rows, graph_rows, bucket))
    return chunks


def right_pack(mask: torch.Tensor) -> torch.Tensor:
    """(n, L) column order that moves each row's real tokens (mask 1), in order, before its padding."""
    return torch.argsort((mask == 0).to(torch.int8), dim=1, stable=True)


RunGraph = Callable[[int, int, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def run_batched(run_graph: RunGraph, *, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None, input_names: list[str], per_token: Callable[[str], bool],
                batch_buckets: list[int], context_buckets: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Encode (n, L) inputs through `run_graph(rows, bucket, inputs)`; returns outputs with n rows (per-token ones
    with L columns at the caller's positions). The caller has checked shapes, lengths and ids."""
    n, width = input_ids.shape
    mask = attention_mask.to(torch.long)
    order = right_pack(mask)
    ids, mask = input_ids.gather(1, order), mask.gather(1, order)
    types = token_type_ids.gather(1, order) if token_type_ids is not None else torch.zeros_like(ids)
    ids = torch.where(mask.bool(), ids, pad_id)  # the graph never sees the caller's padding ids
    lengths = mask.sum(1).tolist()
    outputs: dict[str, torch.Tensor] = {}
    for chunk in plan_chunks(lengths, batch_buckets, context_buckets):
        inputs = _chunk_inputs(chunk, ids, mask, types, pad_id)
        result = run_graph(chunk.graph_rows, chunk.bucket, {k: v for k, v in inputs.items() if k in input_names})
        index = torch.tensor(chunk.rows)
        for name, value in result.items():
            value = value[:len(chunk.rows)]
            if per_token(name):
                keep = min(width, chunk.bucket)
                value = torch.nn.functional.pad(value[:, :keep].movedim(1, -1), (0, width - keep)).movedim(-1, 1)
            if name not in outputs:
                outputs[name] = value.new_zeros((n, *value.shape[1:]))
            outputs[name][index] = value
    back = torch.argsort(order, dim=1)  # packed column -> caller column
    real = attention_mask.to(torch.bool)
    for name, value in outputs.items():
        if per_token(name):
            gather = back.view(n, width, *[1] * (value.dim() - 2)).expand_as(value)
            value = value.gather(1, gather)
            outputs[name] = value.masked_fill(~real.view(n, width, *[1] * (value.dim() - 2)), 0)
    return outputs


def _chunk_inputs(chunk: Chunk, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor,
                  pad_id: int) -> dict[str, torch.Tensor]:
    rows, bucket, k = chunk.graph_rows, chunk.bucket, len(chunk.rows)
    keep = min(bucket, ids.shape[1])
    index = torch.tensor(chunk.rows)
    out = {"input_ids": torch.full((rows, bucket), pad_id, dtype=torch.long),
           "attention_mask": torch.zeros((rows, bucket), dtype=torch.long),
           "token_type_ids": torch.zeros((rows, bucket), dtype=torch.long)}
    out["input_ids"][:k, :keep] = ids[index, :keep]
    out["attention_mask"][:k, :keep] = mask[index, :keep]
    out["token_type_ids"][:k, :keep] = types[index, :keep] * mask[index, :keep]
    out["attention_mask"][k:, 0] = 1  # extra rows attend to one pad token: finite in every model
    return out
