"""Decode/prefill/load/export numbers for SmolLM2-135M, ours vs transformers' eager generate.

Prints a markdown table. Both sides run in this process, on the same weights, in the same dtype,
one after the other, so machine noise hits both. Decode tok/s is measured differentially:
(tokens of a long run - tokens of a short run) / (time difference), which cancels prefill and
per-call overheads for both sides alike.

    python bench/generate_bench.py [--dtypes float32 bfloat16] [--batches 1 4] [--backend torch-aot]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py: shared with compare.py

import torch
from common import read_bandwidth_gbs

SHORT, LONG = 8, 72
PROMPT_LEN = 100


def decode_rate(gen, ids, mask) -> tuple[float, float]:
    """(decode tok/s per sequence, time to first token s), differential over SHORT/LONG tokens."""
    gen(ids, mask, SHORT)  # warm-up
    t = time.perf_counter()
    gen(ids, mask, 1)
    first = time.perf_counter() - t
    t = time.perf_counter()
    gen(ids, mask, SHORT)
    short = time.perf_counter() - t
    t = time.perf_counter()
    gen(ids, mask, LONG)
    long = time.perf_counter() - t
    return (LONG - SHORT) / (long - short), first


def weight_bytes_per_token(artifact: Path) -> int:
    """Bytes of stored weights a decode step reads (every parameter once; rope tables excluded)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(artifact / "weights" / "model.safetensors"), "pt") as f:
        for name in f.keys():
            if not name.startswith("rope_"):
                t = f.get_slice(name)
                total += int(torch.tensor(t.get_shape()).prod()) * (4 if t.get_dtype() == "F32" else 2)
    return total


def hf_reference(gguf: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).to(dtype).eval()

    def gen(ids, mask, n):
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, eos_token_id=None, pad_token_id=0)

    return gen


def measure_load_to_first_token(artifact: Path) -> float:
    """A fresh process: import, load the artifact, prefill and sample one token."""
    code = (
        "import time, torch; t=time.perf_counter();"
        "from neuron_infer import NeuronModelForCausalLM;"
        f"m=NeuronModelForCausalLM.from_pretrained({str(artifact)!r});"
        "m.generate(torch.arange(1, 33).view(1, -1), max_new_tokens=1);"
        "print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--backend", default="torch-aot")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    from smollm2_chat import smollm2_gguf

    from neuron_export.export import ExportOptions, export
    from neuron_infer import NeuronModelForCausalLM

    gguf = smollm2_gguf()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="neuron-bench-"))
    rows = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        hf_gen = hf_reference(gguf, dtype)
        for batch in args.batches:
            artifact = workdir / f"smollm2-{dtype_name}-b{batch}"
            t = time.perf_counter()
            export(ExportOptions(model=str(gguf), output=str(artifact), batch_size=batch, sequence_length=256,
                                 max_context_length=128, context_buckets=[128], torch_dtype=dtype_name,
                                 backend=args.backend, disable_validation=True), log=lambda _m: None)
            export_s = time.perf_counter() - t
            ltft = measure_load_to_first_token(artifact)
            model = NeuronModelForCausalLM.from_pretrained(artifact)

            def ours(ids, mask, n, model=model):
                return model.generate(ids, attention_mask=mask, max_new_tokens=n, eos_token_id=None)

            ids = (torch.arange(batch * PROMPT_LEN).view(batch, PROMPT_LEN) * 7919 + 11) % 49152
            mask = torch.ones_like(ids)
            ours_rate, ours_first = decode_rate(ours, ids, mask)
            hf_rate, hf_first = decode_rate(hf_gen, ids, mask)
            same = torch.equal(ours(ids, mask, 16)[:, PROMPT_LEN:], hf_gen(ids, mask, 16)[:, PROMPT_LEN:])
            bandwidth = read_bandwidth_gbs()
            roofline = bandwidth * 1e9 / weight_bytes_per_token(artifact)
            rows.append((dtype_name, batch, ours_rate, hf_rate, ours_first * 1e3, hf_first * 1e3, ltft, export_s, same,
                         bandwidth, roofline))
            print(f"row: {rows[-1]}", file=sys.stderr, flush=True)

    print(f"\nSmolLM2-135M-Instruct, {torch.get_num_threads()} threads, prompt {PROMPT_LEN} tokens, "
          f"backend {args.backend}, torch {torch.__version__}\n")
    print("| dtype | batch | decode tok/s (ours) | decode tok/s (transformers) | speed-up | prefill+1st token ms (ours / transformers) | load-to-first-token s | export s | 16 greedy tokens equal | read GB/s | roofline tok/s (batch 1) | ours / roofline |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d, b, o, h, of, hf_, load_s, e, s, bw, roof in rows:
        print(f"| {d} | {b} | {o * b:.1f} ({o:.1f}/seq) | {h * b:.1f} ({h:.1f}/seq) | {o / h:.2f}x | {of:.0f} / {hf_:.0f} "
              f"| {load_s:.2f} | {e:.0f} | {s} | {bw:.1f} | {roof:.0f} | {o / roof:.0%} |")


if __name__ == "__main__":
    main()
