"""bf16 decode GEMVs over every SmolLM2-135M linear once (one decode step's weights, 269 MB): stock `F.linear`
vs oneDNN on pre-packed weights vs neuron::linear_16bit, at batch M = 1, 4, 8, next to the read bandwidth.

Random weights of SmolLM2's shapes (30 layers of fused qkv 960x576, o 576x576, fused gate/up 3072x576, down
576x1536, and the 49152x576 lm_head), each its own memory, so no weight is in cache when it is read. Methods run
interleaved A B C C B A within each repetition and the table shows medians, so machine noise (other processes'
compiles) hits all alike; the load average is printed before and after. Not part of CI; no assertion.

    python bench/gemv_bench.py [--reps 5] [--batches 1 4 8] [--dtype bfloat16] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from neuron_infer import kernels

LAYERS, HIDDEN, VOCAB = 30, 576, 49152
LAYER_SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # (N, K) per layer


def weights(dtype: torch.dtype) -> list[torch.Tensor]:
    shapes = LAYER_SHAPES * LAYERS + [(VOCAB, HIDDEN)]
    return [torch.randn(n, k).mul_(0.02).to(dtype) for n, k in shapes]


def read_bandwidth() -> float:
    """GB/s of a float32 sum over 1 GiB, best of 3."""
    big = torch.ones(1 << 28)
    best = min(_timed(big.sum) for _ in range(3))
    return big.numel() * 4 / best / 1e9


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def _timed_both(fn, *args) -> tuple[float, float]:
    """(wall, CPU) seconds: CPU time (all threads of this process) is what other processes' load disturbs least."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def methods(ws: list[torch.Tensor], m: int) -> dict[str, object]:
    try:
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, m) for w in ws]
    except RuntimeError:
        packed = None  # no oneDNN packing for this dtype here

    def stock(x: torch.Tensor) -> None:
        for w in ws:
            F.linear(x[:, : w.shape[1]], w)

    def onednn(x: torch.Tensor) -> None:
        for p, w in zip(packed, ws):
            torch.ops.mkldnn._linear_pointwise(x[:, : w.shape[1]].contiguous(), p, None, "none", [None], "")

    def ours(x: torch.Tensor) -> None:
        for w in ws:
            torch.ops.neuron.linear_16bit(x[:, : w.shape[1]], w, None)

    fns = {"F.linear": stock, "oneDNN packed": onednn, "linear_16bit": ours}
    return fns if packed is not None else {k: v for k, v in fns.items() if k != "oneDNN packed"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    kernels.load()
    ws = weights(dtype)
    mb = sum(w.numel() * w.element_size() for w in ws) / 1e6
    load_before = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, capability "
          f"{torch.backends.cpu.get_cpu_capability()}, kernel paths {kernels.host_paths(dtype)}, {args.dtype}, "
          f"{len(ws)} linears, {mb:.0f} MB; load average {load_before[0]:.2f} {load_before[1]:.2f}")
    bandwidths = [read_bandwidth()]
    rows = []
    for m in args.batches:
        x = torch.randn(m, max(w.shape[1] for w in ws)).to(dtype)
        fns = methods(ws, m)
        wall: dict[str, list[float]] = {name: [] for name in fns}
        cpu: dict[str, list[float]] = {name: [] for name in fns}
        order = list(fns) + list(reversed(fns))  # A B C C B A
        for fn in fns.values():
            fn(x)  # warm-up
        for _ in range(args.reps):
            for name in order:
                w, c = _timed_both(fns[name], x)
                wall[name].append(w)
                cpu[name].append(c)
        bandwidths.append(read_bandwidth())
        rows.append((m, {name: statistics.median(t) for name, t in wall.items()},
                     {name: min(t) for name, t in wall.items()}, {name: statistics.median(t) for name, t in cpu.items()}))
        del fns
    print(f"read bandwidth (float32 sum over 1 GiB) per phase, GB/s: {', '.join(f'{b:.1f}' for b in bandwidths)}")
    print("\n| M | method | wall median ms | wall best ms | GB/s (best) | CPU median ms | vs F.linear (wall median) |")
    print("|---|---|---|---|---|---|---|")
    for m, med, best, cpu_med in rows:
        for name in med:
            print(f"| {m} | {name} | {med[name] * 1e3:.2f} | {best[name] * 1e3:.2f} | {mb / 1e3 / best[name]:.1f} | "
                  f"{cpu_med[name] * 1e3:.2f} | {med['F.linear'] / med[name]:.2f}x |")
    load_after = os.getloadavg()
    print(f"\nload average after: {load_after[0]:.2f} {load_after[1]:.2f} (2 cores shared with other engineers)")


if __name__ == "__main__":
    main()
