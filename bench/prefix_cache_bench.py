"""Time to first token for N requests sharing a long system prompt: the Engine's prefix caching on vs off.

SmolLM2-135M (bf16 where the CPU multiplies it natively, else float32) exported once into .bench/ with
batch N, a cache long enough for the system prompt plus a question, and chunked-prefill graphs. The N
requests (the same ~1,000-token system prompt, each its own question) are submitted at once; a
request's TTFT is the time from submission to its first token. Each measurement runs in a fresh
process (graphs loaded and warmed up first, not timed), in the order on off off on ..., so a noisy
neighbour hits both sides alike. Prints a markdown table.

    python bench/prefix_cache_bench.py [--requests 16] [--system-tokens 1000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, FILLER, cpu_description, smollm2_gguf, tokenizer

QUESTIONS = ["What is the capital of France?", "Name a prime number above 50.", "Who wrote Hamlet?",
             "What colour is the sky?", "How many legs has a spider?", "What is 7 times 8?",
             "Name a planet with rings.", "What language is spoken in Brazil?", "What is H2O?",
             "Who painted the Mona Lisa?", "What is the largest ocean?", "How many days in a leap year?",
             "What is the boiling point of water?", "Name a mammal that flies.", "What is the speed of light?",
             "Which metal is liquid at room temperature?"]


def dtype_here() -> str:
    import torch

    return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"


def ensure_artifact(requests: int, system_tokens: int) -> Path:
    from neuron_export.export import ExportOptions, export

    dtype = dtype_here()
    seq = 1 << (system_tokens + 128).bit_length()  # room for the system prompt, a question and the answer
    path = CACHE / f"smollm2-prefix-b{requests}-s{seq}-{dtype}"
    if not (path / "neuron_config.json").is_file():
        export(ExportOptions(model=str(smollm2_gguf()), output=str(path), batch_size=requests, sequence_length=seq,
                             max_context_length=seq // 2, context_buckets=[64, 256, seq // 2], chunk_buckets=[64, 256],
                             torch_dtype=dtype, backend="torch-aot"))
    return path


def prompts(n: int, system_tokens: int) -> list[list[int]]:
    tok = tokenizer()
    words = tok(FILLER * 4, add_special_tokens=False)["input_ids"][:system_tokens - 8]
    system = tok.decode(words)
    out = []
    for i in range(n):
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        out.append(list(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"]))
    return out


def child(artifact: str, mode: str, requests: int, system_tokens: int) -> None:
    from neuron_infer.engine import Engine, EngineConfig, RequestParams

    batch = prompts(requests, system_tokens)
    engine = Engine.from_artifact(artifact, config=EngineConfig(prefix_caching=(mode == "on")))
    engine.runtime.warmup()
    engine.generate([batch[0][-40:]], RequestParams(max_tokens=2))  # first-use costs are not TTFT
    first: dict[int, float] = {}
    start = time.perf_counter()

    def on_output(i):
        return lambda out: first.setdefault(i, time.perf_counter() - start)

    handles = [engine.add_request(p, RequestParams(max_tokens=1, ignore_eos=True), on_output=on_output(i))
               for i, p in enumerate(batch)]
    for h in handles:
        h.result()
    stats = engine.stats().prefix_cache
    engine.shutdown()
    print(json.dumps({"ttft": [first[i] for i in range(requests)], "prompt_tokens": [len(p) for p in batch],
                      "hit_tokens": stats.hit_tokens if stats else 0}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--system-tokens", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2, help="pairs of (on, off) processes, in A B B A order")
    parser.add_argument("--child", nargs=2, metavar=("ARTIFACT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.requests, args.system_tokens)
        return
    artifact = ensure_artifact(args.requests, args.system_tokens)
    order = [m for r in range(args.rounds) for m in (("on", "off") if r % 2 == 0 else ("off", "on"))]
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    for mode in order:
        out = subprocess.run([sys.executable, __file__, "--requests", str(args.requests), "--system-tokens",
                              str(args.system_tokens), "--child", str(artifact), mode], check=True,
                             capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
        runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    tokens = runs["on"][0]["prompt_tokens"]
    print(f"{cpu_description()}; SmolLM2-135M {dtype_here()}; {args.requests} requests at once, prompts "
          f"{min(tokens)}-{max(tokens)} tokens; {args.rounds} processes per side, order {' '.join(order)}\n")
    print("| prefix caching | TTFT mean (s) | TTFT median (s) | last first token (s), per process | prompt tokens reused |")
    print("|---|---:|---:|---|---:|")
    for mode in ("on", "off"):
        ttft = [t for run in runs[mode] for t in run["ttft"]]
        last = ", ".join(f"{max(run['ttft']):.2f}" for run in runs[mode])
        reused = runs[mode][0]["hit_tokens"] / sum(tokens)
        print(f"| {mode} | {statistics.mean(ttft):.2f} | {statistics.median(ttft):.2f} | {last} | {reused:.0%} |")


if __name__ == "__main__":
    main()
