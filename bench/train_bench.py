"""Training throughput on this machine (a table, not a test).

1. SmolLM2-135M-Instruct, full fine-tuning in fp32 with AdamW on the shipped chat data, one process:
   NeuronTrainer at tp=1 vs transformers.Trainer, same batches size, same run.
2. Tensor-parallel overhead: a SmolLM2-shaped model with 8 query / 2 kv heads (SmolLM2's 9 heads do
   not split over 2 ranks; head_dim 72 keeps hidden 576), random weights, tp=1 in one process vs
   tp=2 (with sequence parallelism) on two torchrun processes, the same threads per process.

Tokens are real (non-pad) tokens; rates exclude the first --warmup steps.

    .hatch/test/bin/python bench/train_bench.py [--steps 8] [--warmup 2] [--batch-size 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "packages/neuron-train/examples/data/chat_small.jsonl"


def load_data(tok, max_len: int):
    from neuron_train.training.data import load_chat_jsonl, tokenize_chat

    return [tokenize_chat(m, tok, max_len) for m in load_chat_jsonl(DATA)]


def rate(tokens: list[float], seconds: list[float], warmup: int) -> float:
    return sum(tokens[warmup:]) / sum(seconds[warmup:])


def bench_neuron(model_dir: Path, dataset, a, out: Path) -> float:
    from neuron_train.models import build_model
    from neuron_train.parallel.dims import ParallelDims
    from neuron_train.training import NeuronTrainer, NeuronTrainingArguments

    model = build_model(model_dir, ParallelDims.local())
    args = NeuronTrainingArguments(output_dir=str(out), per_device_train_batch_size=a.batch_size, max_steps=a.steps + a.warmup,
                                   learning_rate=2e-5, lr_scheduler_type="constant", disable_tqdm=True, logging_steps=1)
    trainer = NeuronTrainer(model, args, dataset)
    trainer.save_checkpoint = lambda: None  # measure training only
    hist = trainer.train()
    return rate([h["tokens"] for h in hist], [h["step_time_s"] for h in hist], a.warmup)


def bench_hf_trainer(model_dir: Path, dataset, a, out: Path, pad_id: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from neuron_train.training.data import Collator

    tokens: list[float] = []
    times: list[float] = []
    collate = Collator(pad_token_id=pad_id)

    def counting_collate(examples):
        batch = collate(examples)
        tokens.append(float(batch["attention_mask"].sum()))
        return batch

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=a.batch_size, max_steps=a.steps + a.warmup,
                             learning_rate=2e-5, lr_scheduler_type="constant", report_to=[], save_strategy="no",
                             logging_steps=1000, disable_tqdm=True, use_cpu=True, dataloader_num_workers=0)
    Trainer(model=model, args=args, train_dataset=dataset, data_collator=counting_collate, callbacks=[Timer()]).train()
    # The collator runs before the step timer starts; batch i belongs to step i.
    return rate(tokens[: len(times)], times, a.warmup)


def tp_worker(a) -> None:
    """Runs under torchrun (tp=2) or alone (tp=1): random SmolLM2-shaped model, synthetic-free real data."""
    import torch.distributed as dist
    from transformers import AutoTokenizer, LlamaConfig

    from neuron_train.models import model_class
    from neuron_train.parallel.dims import ParallelDims
    from neuron_train.training import NeuronTrainer, NeuronTrainingArguments

    tp = int(os.environ.get("WORLD_SIZE", "1"))
    dims = ParallelDims.build(tp=tp)
    base = LlamaConfig.from_pretrained(a.model_dir)
    cfg = LlamaConfig(**{**base.to_dict(), "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 72})
    model = model_class(cfg)(cfg, dims, sequence_parallel=tp > 1)
    dataset = load_data(AutoTokenizer.from_pretrained(a.model_dir), a.max_seq_length)
    with tempfile.TemporaryDirectory() as d:
        args = NeuronTrainingArguments(output_dir=d, tensor_parallel_size=tp, per_device_train_batch_size=a.batch_size,
                                       max_steps=a.steps + a.warmup, learning_rate=2e-5, disable_tqdm=True)
        trainer = NeuronTrainer(model, args, dataset)
        trainer.save_checkpoint = lambda: None
        hist = trainer.train()
    if dims.is_main:
        print("RESULT " + json.dumps({"tp": tp, "tokens_per_s": rate([h["tokens"] for h in hist], [h["step_time_s"] for h in hist], a.warmup)}))
    if dist.is_initialized():
        dist.destroy_process_group()


def run_tp(a, nproc: int, threads: int) -> float:
    cmd = [sys.executable, __file__, "--worker", "--model-dir", str(a.model_dir), "--steps", str(a.steps),
           "--warmup", str(a.warmup), "--batch-size", str(a.batch_size), "--max-seq-length", str(a.max_seq_length)]
    if nproc > 1:
        cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc_per_node={nproc}", *cmd[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"tp={nproc} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[0][len("RESULT "):])["tokens_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-seq-length", type=int, default=96)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per process (OpenMP barriers make 2 threads several times slower on a busy host)")
    p.add_argument("--model-dir", default=str(Path.home() / ".cache/neuron-train/smollm2-135m-instruct"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        tp_worker(a)
        return

    import torch
    from transformers import AutoTokenizer

    from neuron_train.gguf import gguf_to_hf_checkpoint, smollm2_gguf

    model_dir = gguf_to_hf_checkpoint(smollm2_gguf(), a.model_dir)
    a.model_dir = model_dir
    tok = AutoTokenizer.from_pretrained(model_dir)
    dataset = load_data(tok, a.max_seq_length)
    # Other processes share these CPUs and their load drifts: alternate the contenders (ABAB...) and
    # record the load average beside every figure.
    torch.set_num_threads(a.threads)
    ours_runs, hf_runs, tp1_runs, tp2_runs, loads = [], [], [], [], []
    with tempfile.TemporaryDirectory() as d:
        for r in range(a.rounds):
            ours_runs.append(bench_neuron(model_dir, dataset, a, Path(d) / f"neuron{r}"))
            hf_runs.append(bench_hf_trainer(model_dir, dataset, a, Path(d) / f"hf{r}", tok.pad_token_id))
            loads.append(os.getloadavg()[0])
    for _ in range(a.rounds):
        tp1_runs.append(run_tp(a, 1, threads=a.threads))
        tp2_runs.append(run_tp(a, 2, threads=a.threads))
        loads.append(os.getloadavg()[0])
    ours, hf = sum(ours_runs) / a.rounds, sum(hf_runs) / a.rounds
    tp1, tp2 = (sum(r) / a.rounds for r in (tp1_runs, tp2_runs))

    print(f"\ntorch {torch.__version__}, {os.cpu_count()} CPUs, torch threads per process {torch.get_num_threads()}, "
          f"batch {a.batch_size} x <= {a.max_seq_length} tokens, fp32, AdamW, {a.steps} timed steps after {a.warmup}")
    print(f"rounds {a.rounds} (alternating); 1-min load average after each round: {[round(x, 1) for x in loads]}")
    print(f"per round: Trainer {[round(x, 1) for x in hf_runs]}, NeuronTrainer {[round(x, 1) for x in ours_runs]}, "
          f"tp=1 {[round(x, 1) for x in tp1_runs]}, tp=2 {[round(x, 1) for x in tp2_runs]}")
    print(f"{'run':<62} {'tokens/s':>10}")
    print(f"{'SmolLM2-135M  transformers.Trainer (1 process)':<62} {hf:>10.1f}")
    print(f"{'SmolLM2-135M  NeuronTrainer tp=1 (1 process)':<62} {ours:>10.1f}   ({ours / hf:.2f}x Trainer)")
    t = a.threads
    print(f"{f'SmolLM2-shaped 8/2 heads  tp=1, 1 process x {t} thread(s)':<62} {tp1:>10.1f}")
    print(f"{f'SmolLM2-shaped 8/2 heads  tp=2 + SP, 2 processes x {t} thread(s)':<62} {tp2:>10.1f}   "
          f"({tp2 / tp1:.2f}x tp=1: parallel efficiency {tp2 / (2 * tp1):.0%})")


if __name__ == "__main__":
    main()
