"""Training runs compared against a single-process reference computed on rank 0 of the same job.
Both modes run in one launch and save train.pt (process start-up dominates these tiny runs).

tp: tp=2 with sequence parallelism vs tp=1, 20 optimizer steps, per model type. Also
    writes checkpoint-0 (untrained) and the final checkpoint for the consolidation tests.
dp: dp=2 with ZeRO-1 vs dp=1 with twice the per-device batch, 12 steps.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from tiny import out_dir, rank, synthetic_dataset, tiny_hf_model

from neuron_train.models import model_class
from neuron_train.models.convert import full_hf_state_dict
from neuron_train.parallel.dims import ParallelDims
from neuron_train.training import NeuronTrainer, NeuronTrainingArguments


def train(hf, dims: ParallelDims, out: str, *, steps: int, sp: bool, zero_1: bool, batch: int, save_initial: bool = False):
    model = model_class(hf.config)(hf.config, dims, sequence_parallel=sp)
    model.load_hf_state_dict(hf.state_dict())
    args = NeuronTrainingArguments(
        output_dir=out, tensor_parallel_size=dims.tp, sequence_parallel=sp, zero_1=zero_1,
        per_device_train_batch_size=batch, gradient_accumulation_steps=2, max_steps=steps,
        learning_rate=3e-3, warmup_steps=2, weight_decay=0.01, max_grad_norm=1.0, disable_tqdm=True, seed=7,
    )
    trainer = NeuronTrainer(model, args, synthetic_dataset())
    if save_initial:
        trainer.save_checkpoint()
    history = trainer.train()
    return [h["loss"] for h in history], [h["grad_norm"] for h in history], full_hf_state_dict(model)


def main() -> None:
    out = out_dir()
    results: dict = {"tp": {}, "dp": {}}
    tp2 = ParallelDims.build(tp=2)
    for model_type in ("llama", "qwen3", "granite"):
        hf = tiny_hf_model(model_type, seed=3)
        sharded = train(hf, tp2, str(out / f"{model_type}_tp2"), steps=20, sp=True, zero_1=False, batch=2, save_initial=True)
        if rank() == 0:
            ref = train(hf, ParallelDims.local(), str(out / f"{model_type}_tp1"), steps=20, sp=False, zero_1=False, batch=2)
            results["tp"][model_type] = {"initial": hf.state_dict(), "tp2": sharded, "tp1": ref}
        dist.barrier()

    dp2 = ParallelDims.build(tp=1)  # the same two processes, now as two data-parallel ranks
    hf = tiny_hf_model("llama", seed=4)
    replicated = train(hf, dp2, str(out / "dp2"), steps=12, sp=False, zero_1=True, batch=2)
    if rank() == 0:
        ref = train(hf, ParallelDims.local(), str(out / "dp1"), steps=12, sp=False, zero_1=False, batch=4)
        results["dp"]["llama"] = {"dp2": replicated, "dp1": ref}
        torch.save(results, out / "train.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
