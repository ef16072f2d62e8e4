"""Cold vs warm exports of SmolLM2-135M through the compile cache, in one run.

1. cold: empty compile cache, every graph compiled;
2. warm: same checkpoint and shapes again, every graph from the cache;
3. warm, other weights: a fine-tune stand-in (SmolLM2 with perturbed weights, saved as its own
   safetensors checkpoint) of the same architecture.

All three export the same safetensors-format checkpoints (the GGUF is dequantized once beforehand,
outside the timings, so GGUF parsing does not blur the comparison) and all three validate against
transformers. Prints a markdown table.

    python bench/cache_bench.py [--backend torch-aot]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def save_checkpoints(workdir: Path) -> tuple[Path, Path]:
    import torch
    from smollm2_chat import smollm2_gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = smollm2_gguf()
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    config.quantization_config = None  # GGUF-loaded models refuse save_pretrained otherwise
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    paths = []
    for name, noise in (("base", 0.0), ("finetune", 1e-3)):
        model = LlamaForCausalLM(config)
        state = loaded.state_dict()
        if noise:
            gen = torch.Generator().manual_seed(0)
            state = {k: v + noise * torch.randn(v.shape, generator=gen) for k, v in state.items()}
        model.load_state_dict(state, strict=False)
        model.tie_weights()
        path = workdir / name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="torch-aot")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="neuron-cache-bench-"))
    os.environ["NEURON_COMPILE_CACHE_DIR"] = str(workdir / "compile-cache")

    from neuron_export.export import ExportOptions, export

    base, finetune = save_checkpoints(workdir)
    rows = []
    for label, ckpt in (("cold", base), ("warm, same checkpoint", base), ("warm, other weights", finetune)):
        t = time.perf_counter()
        result = export(ExportOptions(model=str(ckpt), output=str(workdir / label.replace(" ", "_").replace(",", "")),
                                      batch_size=1, sequence_length=256, max_context_length=128,
                                      context_buckets=[64, 128], backend=args.backend), log=lambda _m: None)
        rows.append((label, time.perf_counter() - t, result.cache_stats, result.validation_max_diff))
        print(f"done: {label}", file=sys.stderr)
    cold = rows[0][1]
    print(f"\nSmolLM2-135M export, backend {args.backend}, 3 graphs (buckets 64, 128 + token generation)\n")
    print("| export | wall s | % of cold | compiles | cache hits | validation max abs logit diff |")
    print("|---|---|---|---|---|---|")
    for label, seconds, stats, diff in rows:
        print(f"| {label} | {seconds:.1f} | {100 * seconds / cold:.0f}% | {stats['compiles']} | {stats['hits']} | {diff:.2g} |")


if __name__ == "__main__":
    main()
