"""tp=2 (sequence parallel off/on, gradient checkpointing) vs tp=1 vs transformers: loss, logits, grads;
and the parallel layers on their own (gather_output, input_is_parallel=False) vs dense torch ops.

Rank 0 saves `numerics_<model>.pt` with every variant's tensors in HF layout; the test compares them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from tiny import out_dir, rank, tiny_hf_model

from neuron_train.models import model_class
from neuron_train.models.convert import full_hf_state_dict
from neuron_train.parallel.dims import ParallelDims
from neuron_train.parallel.grads import sync_gradients
from neuron_train.parallel.layers import ColumnParallelLinear, ParallelEmbedding, RowParallelLinear

VARIANTS = {
    "tp1": dict(tp=1, sp=False, gc=False),
    "tp2": dict(tp=2, sp=False, gc=False),
    "tp2_sp": dict(tp=2, sp=True, gc=False),
    "tp2_sp_gc": dict(tp=2, sp=True, gc=True),
}


def run_variant(hf, dims: ParallelDims, ids, labels, sp: bool, gc: bool) -> dict:
    model = model_class(hf.config)(hf.config, dims, sequence_parallel=sp, gradient_checkpointing=gc)
    model.load_hf_state_dict(hf.state_dict())
    model.train()
    out = model(ids, labels)
    loss = out.loss_sum / out.num_tokens
    loss.backward()
    sync_gradients(model, dims)
    logits = out.logits.detach().contiguous()
    if dims.tp > 1:
        parts = [torch.empty_like(logits) for _ in range(dims.tp)]
        dist.all_gather(parts, logits, group=dims.tp_group)
        logits = torch.cat(parts, dim=-1)
    return {"loss": loss.detach(), "logits": logits, "grads": full_hf_state_dict(model, grads=True)}


def standalone_layers(dims: ParallelDims) -> dict:
    """Column(gather_output) -> Row(input not parallel) and the embedding, against dense torch ops."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 6, 8, generator=g)
    w1, b1, w2, b2 = torch.randn(12, 8, generator=g), torch.randn(12, generator=g), torch.randn(5, 12, generator=g), torch.randn(5, generator=g)
    emb = torch.randn(10, 8, generator=g)
    ids = torch.randint(0, 10, (2, 6), generator=g)
    col = ColumnParallelLinear(8, 12, dims=dims, bias=True, gather_output=True)
    row = RowParallelLinear(12, 5, dims=dims, bias=True, input_is_parallel=False)
    pe = ParallelEmbedding(10, 8, dims=dims)
    r, n = dims.tp_rank, dims.tp
    with torch.no_grad():
        col.weight.copy_(w1.chunk(n, 0)[r]), col.bias.copy_(b1.chunk(n, 0)[r])
        row.weight.copy_(w2.chunk(n, 1)[r]), row.bias.copy_(b2)
        pe.weight.copy_(emb.chunk(n, 0)[r])
    xin = x.clone().requires_grad_(True)
    y = row(col(xin + pe(ids)))
    (y * torch.arange(5.0)).sum().backward()
    parts = [torch.empty_like(col.weight.grad) for _ in range(n)]
    dist.all_gather(parts, col.weight.grad, group=dims.tp_group)
    return {"x": x, "w1": w1, "b1": b1, "w2": w2, "b2": b2, "emb": emb, "ids": ids,
            "y": y.detach(), "x_grad": xin.grad, "w1_grad": torch.cat(parts, 0)}


def main() -> None:
    dims2 = ParallelDims.build(tp=2)
    layers = standalone_layers(dims2)
    if rank() == 0:
        torch.save(layers, out_dir() / "layers.pt")
    for model_type in ("llama", "qwen3", "granite"):
        hf = tiny_hf_model(model_type, seed=1)
        g = torch.Generator().manual_seed(2)
        ids = torch.randint(0, hf.config.vocab_size, (2, 16), generator=g)
        labels = ids.clone()
        labels[0, :5] = -100  # a prompt-masked row, as in completion-only SFT
        out = hf(input_ids=ids, labels=labels)
        out.loss.backward()
        result = {
            "hf": {
                "loss": out.loss.detach(),
                "logits": out.logits.detach(),
                "grads": {n: p.grad.detach() for n, p in hf.named_parameters()},
            }
        }
        for name, v in VARIANTS.items():
            dims = ParallelDims.local() if v["tp"] == 1 else dims2
            result[name] = run_variant(hf, dims, ids, labels, v["sp"], v["gc"])
        if rank() == 0:
            torch.save(result, out_dir() / f"numerics_{model_type}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
