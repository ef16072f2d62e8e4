"""qwen3_moe at tp=2 against transformers' Qwen3MoeForCausalLM on the same weights (saved by save_pretrained
and loaded through build_model, the real path).

grads: one forward/backward on one batch (with and without gradient checkpointing); ours in checkpoint layout (full_hf_state_dict), transformers'
       converted to the same per-expert layout by transformers itself (save_pretrained of its gradients).
train: 3 AdamW steps of NeuronTrainer (batch = the whole 4-example dataset, so the order it draws examples in
       cannot matter) vs the same steps on transformers; the per-step losses include the router aux loss.
Rank 0 saves moe.pt; the trainer's final checkpoint (run/checkpoint-3) is left for consolidation tests.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from tiny import out_dir, rank, synthetic_dataset, tiny_hf_model

from neuron_train.models import build_model
from neuron_train.models.convert import full_hf_state_dict
from neuron_train.parallel.dims import ParallelDims
from neuron_train.parallel.grads import sync_gradients
from neuron_train.training import NeuronTrainer, NeuronTrainingArguments

STEPS, LR = 3, 1e-3


def batch() -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    data = [{"input_ids": ex["input_ids"][:16], "labels": ex["labels"][:16]}
            for ex in synthetic_dataset(n=16, seed=5) if len(ex["input_ids"]) >= 16][:4]
    return data, torch.tensor([ex["input_ids"] for ex in data]), torch.tensor([ex["labels"] for ex in data])


def hf_layout(hf, tensors: dict[str, torch.Tensor], where: Path) -> dict[str, torch.Tensor]:
    """`tensors` (by transformers' in-memory names) in the checkpoint layout, as save_pretrained writes it."""
    twin = copy.deepcopy(hf)
    for name, p in twin.named_parameters():
        p.data = tensors[name].clone()
    twin.save_pretrained(where)
    return load_file(str(where / "model.safetensors"))


def gathered_logits(model, ids: torch.Tensor, dims: ParallelDims) -> torch.Tensor:
    with torch.no_grad():
        logits = model(ids).logits.contiguous()
    parts = [torch.empty_like(logits) for _ in range(dims.tp)]
    dist.all_gather(parts, logits, group=dims.tp_group)
    return torch.cat(parts, dim=-1)


def ours(base: Path, out: Path, data, ids, labels) -> dict:
    dims = ParallelDims.build(tp=2)
    grads = {}
    for gc in (False, True):  # with gradient checkpointing, the router logits leave a recomputed layer
        model = build_model(base, dims, sequence_parallel=False, gradient_checkpointing=gc)
        model.train()
        o = model(ids, labels, attention_mask=torch.ones_like(ids))
        loss = o.loss_sum / o.num_tokens + o.router_aux_loss
        loss.backward()
        sync_gradients(model, dims)
        grads["gc" if gc else "plain"] = full_hf_state_dict(model, grads=True)

    model = build_model(base, dims, sequence_parallel=False)
    args = NeuronTrainingArguments(
        output_dir=str(out / "run"), tensor_parallel_size=2, sequence_parallel=False, per_device_train_batch_size=4,
        max_steps=STEPS, learning_rate=LR, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
        disable_tqdm=True,
    )
    history = NeuronTrainer(model, args, data).train()
    return {"loss": loss.detach(), "grads": grads, "losses": [h["loss"] for h in history],
            "trained": full_hf_state_dict(model), "logits": gathered_logits(model, ids, dims)}


def reference(hf, out: Path, ids, labels) -> dict:
    mask = torch.ones_like(ids)
    o = hf(input_ids=ids, labels=labels, attention_mask=mask)
    o.loss.backward()
    grads = hf_layout(hf, {n: p.grad for n, p in hf.named_parameters()}, out / "hf_grads")
    first = o.loss.detach()
    hf.zero_grad()
    opt = torch.optim.AdamW(hf.parameters(), lr=LR, weight_decay=0.0, fused=True)
    losses = []
    for _ in range(STEPS):
        o = hf(input_ids=ids, labels=labels, attention_mask=mask)
        o.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(o.loss.item())
    hf.save_pretrained(out / "hf_trained")
    with torch.no_grad():
        logits = hf(input_ids=ids).logits
    return {"loss": first, "grads": grads, "losses": losses, "logits": logits,
            "aux_loss": hf(input_ids=ids, output_router_logits=True).aux_loss.detach()}


def main() -> None:
    out = out_dir()
    hf = tiny_hf_model("qwen3_moe", seed=5)
    data, ids, labels = batch()
    if rank() == 0:
        hf.save_pretrained(out / "base")
    dist.init_process_group("gloo")
    dist.barrier()
    got = ours(out / "base", out, data, ids, labels)
    if rank() == 0:
        torch.save({"ours": got, "hf": reference(hf, out, ids, labels), "probe": ids}, out / "moe.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
