"""Resume exactness: --phase full trains 10 steps saving at 5; --phase resume restarts from
checkpoint-5 in a fresh process group and trains steps 6-10. Each writes <layout>/<phase>.json.
Both layouts run in one launch (process start-up dominates these tiny runs):

tp2: tensor parallel with sequence parallelism and bf16 autocast.
dp2: data parallel with ZeRO-1 (optimizer state gathered at save, re-sharded at load).
"""

from __future__ import annotations

import sys

import torch.distributed as dist
from tiny import out_dir, rank, synthetic_dataset, tiny_hf_model, write_json

from neuron_train.models import model_class
from neuron_train.parallel.dims import ParallelDims
from neuron_train.training import NeuronTrainer, NeuronTrainingArguments


def run(phase: str, layout: str) -> None:
    tp = 2 if layout == "tp2" else 1
    dims = ParallelDims.build(tp=tp)
    hf = tiny_hf_model("granite", seed=6)
    model = model_class(hf.config)(hf.config, dims, sequence_parallel=tp > 1)
    model.load_hf_state_dict(hf.state_dict())
    out = out_dir() / layout
    args = NeuronTrainingArguments(
        output_dir=str(out / "run"), tensor_parallel_size=tp, sequence_parallel=tp > 1, zero_1=tp == 1,
        per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=10, save_steps=5,
        learning_rate=3e-3, warmup_steps=3, lr_scheduler_type="cosine", weight_decay=0.1,
        bf16=tp > 1, disable_tqdm=True, seed=11,
    )
    # 24 examples: an epoch is 6 (dp2) or 12 (tp2) micro-batches, so the run crosses epoch boundaries
    # and the resumed batch order must continue mid-epoch.
    trainer = NeuronTrainer(model, args, synthetic_dataset(n=24))
    resume = out / "run" / "checkpoint-5" if phase == "resume" else None
    history = trainer.train(resume_from_checkpoint=resume)
    if rank() == 0:
        write_json(f"{layout}/{phase}.json", {"loss": [h["loss"] for h in history], "lr": [h["learning_rate"] for h in history],
                                     "grad_norm": [h["grad_norm"] for h in history]})


def main() -> None:
    phase = sys.argv[sys.argv.index("--phase") + 1]
    for layout in ("tp2", "dp2"):
        run(phase, layout)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
