"""Mixture-of-experts decode on this CPU: a torch-aot artifact vs transformers eager, on the same random weights.

Builds a random Qwen3-MoE checkpoint (default: 8 layers, hidden 512, 32 experts of 256, top-4, vocab 8192), exports
it with the real torch-aot backend (AOTInductor) in float32 and bfloat16 (batch 1, sequence 256, one prompt bucket
of 64), then times greedy decode steps after a 32-token prompt, each measurement in a fresh process, interleaved
ours hf hf ours per round so that drifting machine load hits both. transformers runs its default experts
implementation (grouped_mm) with a DynamicCache. Prints a markdown table. Artifacts are reused from --workdir.

    python bench/moe_bench.py [--rounds 2] [--dtypes float32,bfloat16] [--layers 2 --experts 8]  # last: smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from common import cpu_description, median

PROMPT_LEN = 32
SHAPES = dict(batch_size=1, sequence_length=256, max_context_length=64, context_buckets=[64], kv_buckets=[],
              chunk_buckets=[])


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def moe_config(args: argparse.Namespace):
    import transformers

    return transformers.Qwen3MoeConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
        moe_intermediate_size=args.moe_intermediate, num_experts=args.experts, num_experts_per_tok=args.top_k,
        norm_topk_prob=True, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, head_dim=args.head_dim, max_position_embeddings=1024,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


def prepare(workdir: Path, args: argparse.Namespace) -> dict[str, str]:
    """The checkpoint and one artifact per dtype in workdir; returns {dtype: export note}."""
    import transformers

    from neuron_export.export import ExportOptions, export

    checkpoint = workdir / "checkpoint"
    if not (checkpoint / "config.json").exists():
        torch.manual_seed(0)  # transformers' own init, seeded
        model = transformers.AutoModelForCausalLM.from_config(moe_config(args), dtype=torch.float32)
        with torch.no_grad():  # router weights larger than the init's: routing far from uniform
            for name, p in model.named_parameters():
                if name.endswith("mlp.gate.weight"):
                    p.normal_(0, 0.3)
        model.save_pretrained(checkpoint)
    notes = {}
    for dtype in args.dtypes:
        artifact = workdir / dtype
        if (artifact / "neuron_config.json").exists():
            notes[dtype] = "reused"
            continue
        print(f"exporting {dtype} to {artifact} ...", file=sys.stderr, flush=True)
        result = export(ExportOptions(model=str(checkpoint), output=str(artifact), torch_dtype=dtype,
                                      backend="torch-aot", disable_validation=True, **SHAPES), log=lambda _m: None)
        notes[dtype] = f"{result.seconds:.0f} s"
    return notes


# ---- one measurement: a fresh process ---------------------------------------------------------
def measure_ours(artifact: Path, steps: int) -> tuple[list[int], list[float]]:
    from neuron_cache import Artifact
    from neuron_infer import load_runtime

    runtime = load_runtime(Artifact.open(artifact))
    prompt = (torch.arange(PROMPT_LEN) * 7919 + 11) % runtime.vocab_size

    def run(n: int) -> tuple[list[int], list[float]]:
        tokens, step_ms = [int(runtime.prefill(prompt, 0).argmax())], []
        for pos in range(PROMPT_LEN, PROMPT_LEN + n):
            t = time.perf_counter()
            out = runtime.decode(torch.tensor([tokens[-1]]), torch.tensor([pos]))
            tokens.append(int(out[0].argmax()))
            step_ms.append((time.perf_counter() - t) * 1e3)
        return tokens, step_ms

    run(4)  # warm-up
    return run(steps)


def measure_hf(checkpoint: Path, dtype: str, steps: int) -> tuple[list[int], list[float]]:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=getattr(torch, dtype)).eval()
    prompt = ((torch.arange(PROMPT_LEN) * 7919 + 11) % model.config.vocab_size).view(1, -1)

    def run(n: int) -> tuple[list[int], list[float]]:
        cache = transformers.DynamicCache(config=model.config)
        with torch.no_grad():
            logits = model(prompt, past_key_values=cache, use_cache=True).logits[0, -1]
            tokens, step_ms = [int(logits.argmax())], []
            for _ in range(n):
                t = time.perf_counter()
                logits = model(torch.tensor([[tokens[-1]]]), past_key_values=cache, use_cache=True).logits[0, -1]
                tokens.append(int(logits.argmax()))
                step_ms.append((time.perf_counter() - t) * 1e3)
        return tokens, step_ms

    run(4)
    return run(steps)


def run_measure(kind: str, dtype: str, workdir: Path, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--measure", kind, "--dtype", dtype, "--workdir", str(workdir),
           "--decode-steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"measurement {kind} {dtype} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2, help="rounds of ours hf hf ours per dtype")
    p.add_argument("--dtypes", type=lambda s: s.split(","), default=["float32", "bfloat16"])
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--moe-intermediate", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--measure", choices=("ours", "hf"), help=argparse.SUPPRESS)  # internal: one measurement
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    tag = f"L{args.layers}-h{args.hidden}-e{args.experts}x{args.moe_intermediate}-k{args.top_k}-v{args.vocab}"
    workdir = args.workdir or Path.home() / ".cache" / "neuron-bench" / "moe_bench" / tag
    if args.measure:
        start = loadavg()
        if args.measure == "ours":
            tokens, ms = measure_ours(workdir / args.dtype, args.decode_steps)
        else:
            tokens, ms = measure_hf(workdir / "checkpoint", args.dtype, args.decode_steps)
        print(json.dumps(dict(tokens=tokens, decode_ms=median(ms), load_start=start)))
        return
    load_begin = loadavg()
    workdir.mkdir(parents=True, exist_ok=True)
    notes = prepare(workdir, args)
    runs = []
    for dtype in args.dtypes:
        for rnd in range(1, args.rounds + 1):
            for kind in ("ours", "hf", "hf", "ours"):
                run = run_measure(kind, dtype, workdir, args.decode_steps) | dict(round=rnd, kind=kind, dtype=dtype)
                print(f"{dtype} round {rnd} {kind}: {run['decode_ms']:.2f} ms/token", file=sys.stderr, flush=True)
                runs.append(run)
    print(f"\nQwen3-MoE, random weights: {args.layers} layers, hidden {args.hidden}, {args.experts} experts of "
          f"{args.moe_intermediate}, top-{args.top_k}, {args.heads} heads / {args.kv_heads} kv heads of "
          f"{args.head_dim}, vocab {args.vocab}; batch 1, prompt {PROMPT_LEN}, {args.decode_steps} decode steps "
          f"(median ms/step); torch {torch.__version__}")
    print(f"CPU: {cpu_description()}; load average at start {load_begin}, at end {loadavg()}; export: "
          + ", ".join(f"{d} {n}" for d, n in notes.items()) + "\n")
    print("| dtype | round | system | decode ms/token | tok/s | greedy tokens = transformers' | load avg at start |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        hf = next(x for x in runs if x["dtype"] == r["dtype"] and x["kind"] == "hf")
        same = "-" if r["kind"] == "hf" else str(r["tokens"] == hf["tokens"])
        print(f"| {r['dtype']} | {r['round']} | {'neuron torch-aot' if r['kind'] == 'ours' else 'transformers eager'} "
              f"| {r['decode_ms']:.2f} | {1e3 / r['decode_ms']:.1f} | {same} | {r['load_start']} |")
    print("\n| dtype | neuron torch-aot tok/s | transformers eager tok/s | speed-up |")
    print("|---|---|---|---|")
    for dtype in args.dtypes:
        ours = median([r["decode_ms"] for r in runs if r["dtype"] == dtype and r["kind"] == "ours"])
        hf = median([r["decode_ms"] for r in runs if r["dtype"] == dtype and r["kind"] == "hf"])
        print(f"| {dtype} | {1e3 / ours:.1f} | {1e3 / hf:.1f} | {hf / ours:.2f}x |")


if __name__ == "__main__":
    main()
