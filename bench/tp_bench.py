"""Tensor parallelism on this CPU: tp=1 vs tp=2 on one SmolLM2-135M-shaped model, with gloo's all_reduce cost.

Builds a random-weight Llama with SmolLM2-135M's shapes, except 8 attention heads / 2 kv heads of 64
(SmolLM2's 9 / 3 do not split over 2 ranks), exports it with torch-aot at tp=1 and tp=2, then times
each artifact in a fresh process (load, prefill of a 100-token prompt, greedy decode steps through
`runtime.decode`), interleaved tp1 tp2 tp2 tp1 per round so that drifting machine load hits both.
A 2-process gloo all_reduce micro-benchmark in the same run prices the collectives a tp=2 decode step
runs: one after each o_proj and down_proj, one for the embedding, one for the (batch, vocab) logits.
Prints markdown tables. Artifacts are kept in --workdir and reused by later runs (--reexport rebuilds).

    python bench/tp_bench.py [--rounds 2] [--workdir DIR] [--layers 2 --hidden 128 --vocab 1024]  # last: smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

PROMPT_LEN = 100
SHAPES = dict(batch_size=1, sequence_length=256, max_context_length=128, context_buckets=[128])


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cores() -> int:
    return len(os.sched_getaffinity(0))


def cpu_description() -> str:
    info = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    isa = subprocess.run("grep -o -E 'avx512[a-z_0-9]*|amx[a-z_]*|avx2' /proc/cpuinfo | sort -u", shell=True,
                         capture_output=True, text=True).stdout.split()
    return f"{model}; ISA {' '.join(isa) or 'none of avx2/avx512/amx'}; torch cpu capability " \
           f"{torch.backends.cpu.get_cpu_capability()}; {cores()} cores"


# ---- checkpoint and artifacts -----------------------------------------------------------------
def llama_config(args: argparse.Namespace) -> dict:
    return dict(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                head_dim=args.head_dim, tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5,
                max_position_embeddings=2048, bos_token_id=1, eos_token_id=2)


def build_checkpoint(path: Path, config: dict) -> None:
    import transformers

    torch.manual_seed(0)  # transformers' own init (std 0.02), seeded
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval().save_pretrained(path)


def matches(artifact: Path, config: dict, tp: int) -> bool:
    if not (artifact / "neuron_config.json").exists():
        return False
    saved = json.loads((artifact / "config.json").read_text())
    neuron = json.loads((artifact / "neuron_config.json").read_text())
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim")
    same = all(saved.get(k) == config[k] for k in keys) and neuron["tensor_parallel_size"] == tp
    if not same:
        sys.exit(f"{artifact} holds another model or tp than asked for; pass --reexport or another --workdir")
    return True


def export_artifacts(workdir: Path, config: dict, reexport: bool) -> dict[int, str]:
    """{tp: 'export s (cache hits)' or 'reused'} after making sure workdir/tp1 and workdir/tp2 exist."""
    from neuron_export.export import ExportOptions, export

    checkpoint = workdir / "checkpoint"
    if reexport or not (checkpoint / "config.json").exists():
        build_checkpoint(checkpoint, config)
    notes = {}
    for tp in (1, 2):
        artifact = workdir / f"tp{tp}"
        if not reexport and matches(artifact, config, tp):
            notes[tp] = "reused"
            continue
        print(f"exporting tp={tp} to {artifact} ...", file=sys.stderr, flush=True)
        result = export(ExportOptions(model=str(checkpoint), output=str(artifact), tensor_parallel_size=tp,
                                      torch_dtype="float32", backend="torch-aot", disable_validation=True, **SHAPES),
                        log=lambda _m: None)
        notes[tp] = f"{result.seconds:.0f} s ({result.cache_stats.get('hits', 0)} cache hits)"
    return notes


# ---- one measurement: a fresh process per artifact --------------------------------------------
def measure(artifact: Path, prefill_repeats: int, decode_steps: int, logits_out: Path) -> dict:
    """Runs in its own process: load, prefill, decode; prints a JSON line."""
    load_start = loadavg()
    from neuron_cache import Artifact
    from neuron_infer import load_runtime

    t = time.perf_counter()
    runtime = load_runtime(Artifact.open(artifact))
    runtime.warmup()  # loads the prefill graph: part of getting ready to serve
    load_s = time.perf_counter() - t
    vocab = runtime.vocab_size
    prompt = (torch.arange(PROMPT_LEN) * 7919 + 11) % vocab
    prefill_ms = []
    for i in range(prefill_repeats + 1):  # the first is a warm-up
        t = time.perf_counter()
        logits = runtime.prefill(prompt, 0)
        if i:
            prefill_ms.append((time.perf_counter() - t) * 1e3)
    torch.save(logits, logits_out)
    greedy(runtime, logits, 8)  # decode warm-up
    tokens, step_ms = greedy(runtime, runtime.prefill(prompt, 0), decode_steps)
    if hasattr(runtime, "close"):
        runtime.close()
    return dict(load_s=load_s, prefill_ms=statistics.median(prefill_ms), decode_ms=statistics.median(step_ms),
                tokens=tokens, load_start=load_start)


def greedy(runtime, logits: torch.Tensor, steps: int) -> tuple[list[int], list[float]]:
    """`steps` greedy decode steps after a prefill that returned `logits`: (tokens, ms of each step)."""
    tokens, step_ms = [int(logits.argmax())], []
    for pos in range(PROMPT_LEN, PROMPT_LEN + steps):
        t = time.perf_counter()
        out = runtime.decode(torch.tensor([tokens[-1]]), torch.tensor([pos]))  # (batch,) each -> (batch, vocab)
        tokens.append(int(out[0].argmax()))
        step_ms.append((time.perf_counter() - t) * 1e3)
    return tokens, step_ms


def run_measure(artifact: Path, args: argparse.Namespace, logits_out: Path) -> dict:
    cmd = [sys.executable, __file__, "--measure", str(artifact), "--logits-out", str(logits_out),
           "--prefill-repeats", str(args.prefill_repeats), "--decode-steps", str(args.decode_steps)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"measurement of {artifact} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- the collective on its own ----------------------------------------------------------------
def _all_reduce_rank(rank: int, store: str, widths: list[int], iters: int, result: str) -> None:
    import torch.distributed as dist

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
    medians = {}
    for width in widths:
        x = torch.randn(1, width)
        for _ in range(20):
            dist.all_reduce(x)
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            dist.all_reduce(x)
            times.append((time.perf_counter() - t) * 1e6)
        medians[width] = statistics.median(times)
    dist.destroy_process_group()
    if rank == 0:
        Path(result).write_text(json.dumps(medians))


def all_reduce_us(widths: list[int], iters: int = 200) -> dict[int, float]:
    """Median µs of one gloo all_reduce of a (1, width) float32 tensor between 2 processes of 1 thread each."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="tp-bench-gloo-") as tmp:
        result = os.path.join(tmp, "result.json")
        mp.spawn(_all_reduce_rank, args=(os.path.join(tmp, "store"), widths, iters, result), nprocs=2)
        return {int(k): v for k, v in json.loads(Path(result).read_text()).items()}


# ---- the run ----------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2, help="rounds of tp1 tp2 tp2 tp1 (0: export only)")
    p.add_argument("--workdir", type=Path, default=None, help="where the checkpoint and artifacts live (reused)")
    p.add_argument("--reexport", action="store_true", help="rebuild the checkpoint and artifacts in --workdir")
    p.add_argument("--prefill-repeats", type=int, default=7)
    p.add_argument("--decode-steps", type=int, default=64)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: one measurement process
    p.add_argument("--logits-out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args()


def report(args, notes, runs, collectives, load_begin, load_end) -> None:
    L = args.layers
    small, large = statistics.median(c[args.hidden] for c in collectives), statistics.median(c[args.vocab] for c in collectives)
    by_tp = {tp: [r for r in runs if r["tp"] == tp] for tp in (1, 2)}
    med = {tp: {k: statistics.median(r[k] for r in rs) for k in ("load_s", "prefill_ms", "decode_ms")}
           for tp, rs in by_tp.items()}
    per_step_ms = ((2 * L + 1) * small + large) / 1e3
    print(f"\ntp=1 vs tp=2, torch-aot float32, random weights with SmolLM2-135M's shapes ({L} layers, hidden "
          f"{args.hidden}, intermediate {args.intermediate}, vocab {args.vocab}, tied) but {args.heads} heads / "
          f"{args.kv_heads} kv heads of {args.head_dim}: SmolLM2's 9 heads / 3 kv heads do not split over 2 ranks.")
    print(f"batch 1, sequence 256, bucket 128, prompt {PROMPT_LEN} tokens; torch {torch.__version__}, "
          f"python {platform.python_version()}")
    print(f"CPU: {cpu_description()}; tp=1 runs {cores()} threads, tp=2 two ranks of {max(1, cores() // 2)}")
    print(f"load average (1/5/15 min) at start {load_begin}, at end {load_end}; export: "
          + ", ".join(f"tp={tp} {n}" for tp, n in notes.items()) + "\n")
    print("| round | config | load s | prefill ms (100 tokens) | decode ms/token | tok/s | greedy tokens = tp=1 | "
          "prefill logits max abs diff vs tp=1 | load avg at process start |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['round']} | tp={r['tp']} | {r['load_s']:.2f} | {r['prefill_ms']:.1f} | {r['decode_ms']:.2f} | "
              f"{1e3 / r['decode_ms']:.1f} | {r['same_tokens']} | {r['logit_diff']:.1e} | {r['load_start']} |")
    print("\n| config (median of runs) | load s | prefill ms (100 tokens) | decode ms/token | tok/s |")
    print("|---|---|---|---|---|")
    for tp, m in med.items():
        print(f"| tp={tp} | {m['load_s']:.2f} | {m['prefill_ms']:.1f} | {m['decode_ms']:.2f} | "
              f"{1e3 / m['decode_ms']:.1f} |")
    share = per_step_ms / med[2]["decode_ms"]
    print("\ngloo all_reduce, 2 processes of 1 thread, median of 200 (per round: "
          + "; ".join(f"{c[args.hidden]:.0f} / {c[args.vocab]:.0f}" for c in collectives) + " µs):")
    print(f"- (1, {args.hidden}) float32: {small:.0f} µs; (1, {args.vocab}) float32: {large:.0f} µs")
    print(f"- a tp=2 decode step runs 2 per layer + 2 = {2 * L + 2} all_reduces ({2 * L + 1} of (1, {args.hidden}), "
          f"1 of the logits): ~{per_step_ms:.1f} ms, {share:.0%} of the tp=2 decode step "
          f"({med[2]['decode_ms']:.1f} ms); tp=2 without them ~{med[2]['decode_ms'] - per_step_ms:.1f} ms "
          f"vs tp=1 {med[1]['decode_ms']:.1f} ms")
    print(f"- tp=2 / tp=1: decode {med[2]['decode_ms'] / med[1]['decode_ms']:.2f}x the time, prefill "
          f"{med[2]['prefill_ms'] / med[1]['prefill_ms']:.2f}x, load {med[2]['load_s'] / med[1]['load_s']:.2f}x")
    print(f"\nTensor parallelism on {cores()} cores is for correctness, not speed: both ranks share the cores tp=1 "
          "already uses, and every decode step adds the all_reduces above.")


def main() -> None:
    args = parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.prefill_repeats, args.decode_steps, args.logits_out)))
        return
    load_begin = loadavg()
    config = llama_config(args)
    tag = f"L{args.layers}-h{args.hidden}-i{args.intermediate}-v{args.vocab}-{args.heads}x{args.head_dim}kv{args.kv_heads}"
    workdir = args.workdir or Path.home() / ".cache" / "neuron-bench" / "tp_bench" / tag
    workdir.mkdir(parents=True, exist_ok=True)
    notes = export_artifacts(workdir, config, args.reexport)
    if args.rounds == 0:
        print(f"artifacts in {workdir}: " + ", ".join(f"tp={tp} {n}" for tp, n in notes.items()))
        return

    runs, collectives = [], []
    with tempfile.TemporaryDirectory(prefix="tp-bench-") as tmp:
        for rnd in range(1, args.rounds + 1):
            collectives.append(all_reduce_us([args.hidden, args.vocab]))
            for i, tp in enumerate((1, 2, 2, 1)):
                logits_file = Path(tmp) / f"r{rnd}-{i}.pt"
                run = run_measure(workdir / f"tp{tp}", args, logits_file) | dict(round=rnd, tp=tp, logits=logits_file)
                print(f"round {rnd} tp={tp}: {run['load_s']:.2f} s load, {run['prefill_ms']:.1f} ms prefill, "
                      f"{run['decode_ms']:.2f} ms/token", file=sys.stderr, flush=True)
                runs.append(run)
        reference = next(r for r in runs if r["tp"] == 1)
        ref_logits = torch.load(reference["logits"])
        for r in runs:
            r["same_tokens"] = r["tokens"] == reference["tokens"]
            r["logit_diff"] = float((torch.load(r["logits"]) - ref_logits).abs().max())
    report(args, notes, runs, collectives, load_begin, loadavg())


if __name__ == "__main__":
    main()
