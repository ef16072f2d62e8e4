"""LoRA SFT on the shipped chat dataset (SmolLM2 tokenizer, chat template, completion-only labels)
with a tiny random qwen3 whose single kv head is replicated at tp=2.

Writes base/ (the HF base model + tokenizer), tp2/ (training output with checkpoints) and, on rank
0, lora.json with the tp=2 and tp=1 loss curves.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist
from tiny import out_dir, rank, tiny_hf_model, write_json
from transformers import AutoTokenizer

from neuron_train.lora import LoraConfig, inject_lora
from neuron_train.models import model_class
from neuron_train.parallel.dims import ParallelDims
from neuron_train.training import NeuronTrainer, NeuronTrainingArguments
from neuron_train.training.data import load_chat_jsonl, tokenize_chat

DATA = Path(__file__).resolve().parents[3] / "packages/neuron-train/examples/data/chat_small.jsonl"


def run(hf, tok, dataset, dims: ParallelDims, out: Path) -> list[float]:
    model = model_class(hf.config)(hf.config, dims, sequence_parallel=dims.tp > 1)
    model.load_hf_state_dict(hf.state_dict())
    inject_lora(model, LoraConfig(r=8, lora_alpha=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")))
    args = NeuronTrainingArguments(
        output_dir=str(out), tensor_parallel_size=dims.tp, sequence_parallel=dims.tp > 1,
        per_device_train_batch_size=4, max_steps=16, learning_rate=1e-2, lr_scheduler_type="constant",
        max_grad_norm=1.0, disable_tqdm=True, seed=0, save_steps=8,
    )
    return [h["loss"] for h in NeuronTrainer(model, args, dataset, tokenizer=tok).train()]


def main() -> None:
    tok = AutoTokenizer.from_pretrained(sys.argv[sys.argv.index("--tokenizer") + 1])
    dataset = [tokenize_chat(m, tok, max_length=96) for m in load_chat_jsonl(DATA)]
    hf = tiny_hf_model("qwen3", seed=5, vocab_size=len(tok))
    out = out_dir()
    if rank() == 0:
        hf.save_pretrained(out / "base")
        tok.save_pretrained(out / "base")
    dims = ParallelDims.build(tp=2)
    tp2 = run(hf, tok, dataset, dims, out / "tp2")
    if rank() == 0:
        tp1 = run(hf, tok, dataset, ParallelDims.local(), out / "tp1")
        write_json("lora.json", {"tp2": tp2, "tp1": tp1})
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
