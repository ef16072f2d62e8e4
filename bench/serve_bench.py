"""Generated tokens/s of vLLM's OpenAI server on SmolLM2-135M: neuron-vllm vs vLLM's own CPU backend.

Both servers run in this script on the same weights in float32, with the same limits
(max_model_len 256, max_num_seqs 8), the same prompt and greedy decoding with a fixed number of
tokens. Both stay up (idle when not measured) and are measured in the order A B B A at each
concurrency, so a noisy neighbour on a shared machine hits both sides alike; each side's figure is
the mean of its two runs. At concurrency C, C client threads send `--rounds` requests each;
tok/s = generated tokens / wall time. Prints a markdown table with the load average seen.

    python bench/serve_bench.py [--concurrency 1 4 8] [--max-tokens 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py: shared with compare.py
from common import SERVER_ENV as ENV
from common import ensure_hf_checkpoint, free_port, server
from common import smollm2_gguf as gguf_path

SHAPES = dict(batch_size=8, sequence_length=256, max_context_length=128, context_buckets=[64, 128],
              torch_dtype="float32", backend="torch-aot")
PROMPT = ("Write a short story about a lighthouse keeper who finds a message in a bottle. The story should have a "
          "beginning, a middle and an end.")


def ensure_artifact(root: Path) -> Path:
    """The same artifact the vLLM tests export (and reuse), so a test run leaves it ready."""
    name = "smollm2-b8-s256-c128-k64_128-float32-torch-aot"
    path = root / name
    if not (path / "neuron_config.json").is_file():
        from neuron_export.export import ExportOptions, export

        export(ExportOptions(model=str(gguf_path()), output=str(path), **SHAPES))
    return path


def measure(base_url: str, concurrency: int, rounds: int, max_tokens: int) -> float:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", timeout=900, max_retries=0)
    model = client.models.list().data[0].id

    def one(_: int) -> int:
        out = client.completions.create(model=model, prompt=PROMPT, max_tokens=max_tokens, temperature=0,
                                        extra_body={"ignore_eos": True})
        return out.usage.completion_tokens

    one(0)  # warm-up: first-use costs are not throughput
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, range(concurrency * rounds)))
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="requests per client thread")
    parser.add_argument("--workdir", default=os.environ.get("NEURON_VLLM_TEST_ARTIFACTS",
                                                            str(Path(tempfile.gettempdir()) / "neuron-vllm-tests")))
    args = parser.parse_args()
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    artifact, checkpoint = ensure_artifact(root), ensure_hf_checkpoint(root)
    common = ["--max-model-len", "256", "--max-num-seqs", "8", "--dtype", "float32"]
    bin_dir = Path(sys.executable).parent
    sides = {
        "neuron-vllm": ([str(bin_dir / "neuron-vllm"), "serve", str(artifact)], {"VLLM_PLUGINS": "neuron"}),
        "vLLM CPU": ([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint),
                      "--host", "127.0.0.1", *common], {"VLLM_PLUGINS": ""}),
    }
    rates: dict[str, dict[int, list[float]]] = {name: {c: [] for c in args.concurrency} for name in sides}
    loads = []
    with contextlib.ExitStack() as stack:
        urls = {}
        for name, (command, extra_env) in sides.items():
            port = free_port()
            env = {**os.environ, **ENV, **extra_env}
            log = root / f"serve_bench-{name.replace(' ', '_')}.log"
            print(f"starting {name} (log: {log})", file=sys.stderr)
            urls[name] = stack.enter_context(server([*command, "--port", str(port)], env, port, log))
        a, b = sides
        for c in args.concurrency:
            for name in (a, b, b, a):
                loads.append(os.getloadavg()[0])
                rates[name][c].append(measure(urls[name], c, args.rounds, args.max_tokens))
                print(f"  {name} concurrency {c}: {rates[name][c][-1]:.1f} tok/s (load {loads[-1]:.1f})",
                      file=sys.stderr)
    print(f"\nSmolLM2-135M float32, {args.max_tokens} generated tokens per request, greedy, "
          f"{args.rounds} requests per client, {os.cpu_count()} CPUs, 1-min load average {min(loads):.1f}-"
          f"{max(loads):.1f} during the runs (A B B A order, mean of two)\n")
    print("| concurrency | neuron-vllm tok/s | vLLM CPU tok/s | neuron / vLLM |")
    print("|---:|---:|---:|---:|")
    for c in args.concurrency:
        x, y = (sum(rates[n][c]) / len(rates[n][c]) for n in sides)
        print(f"| {c} | {x:.1f} | {y:.1f} | {x / y:.2f} |")


if __name__ == "__main__":
    main()
