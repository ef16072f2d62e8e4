"""The routed-experts layouts of models/moe.py against each other, eager, per token count and dtype.

One MoE block shaped like a small Qwen3-MoE layer (hidden 512, 32 experts of 256, top-4 by default), random
weights; for each token count (decode: 1-4 rows, prefill: 32-512) times:
- dense: every expert on every token, weighted by the routing (what the block must not do);
- pairs: each (token, expert) pair through a view of its expert's weights (models/moe.py, decode);
- experts: pairs sorted by expert, each expert's run through its weights (models/moe.py, prefill);
- gather-bmm: every pair's expert weights copied out (index_select on dim 0) and batch-multiplied (tried first:
  the copies cost more than the matmuls);
- grouped_mm: pairs sorted by expert, aten._grouped_mm over the expert weights in place (no copies; traces only
  in bf16 in torch 2.13, eager runs both);
- hf-loop: transformers' eager loop over the experts hit.
Medians in ms over --reps runs, after a warm-up; all in one process, interleaved per size.

    python bench/moe_paths.py [--hidden 512 --intermediate 256 --experts 32 --top-k 4] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from neuron_cache.arch.spec import DecoderArch
from neuron_export.models.moe import MoE


def block(args, dtype) -> MoE:
    arch = DecoderArch(model_type="qwen3_moe", vocab_size=16, hidden_size=args.hidden, intermediate_size=args.hidden,
                       num_layers=1, num_heads=1, num_kv_heads=1, head_dim=args.hidden, rms_norm_eps=1e-6,
                       num_experts=args.experts, num_experts_per_tok=args.top_k, moe_intermediate_size=args.intermediate)
    m = MoE(arch)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05)
    return m.to(dtype).eval()


def dense(m: MoE, h, w, ids):
    gate = torch.zeros(h.shape[0], m.local_experts, dtype=w.dtype).scatter_(1, ids, w)
    gu = torch.einsum("nh,eih->nei", h, m.experts.gate_up_proj)
    g, u = gu.split(m.intermediate, dim=-1)
    return (torch.einsum("nei,ehi->neh", m.act(g) * u, m.experts.down_proj) * gate[..., None].to(h.dtype)).sum(1)


def grouped(m: MoE, h, w, ids):
    k = ids.shape[1]
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    offs = torch.cumsum(torch.bincount(flat, minlength=m.local_experts), 0).to(torch.int32)
    rows = h.index_select(0, order // k)
    gu = torch._grouped_mm(rows, m.experts.gate_up_proj.transpose(1, 2), offs=offs)
    g, u = gu.split(m.intermediate, dim=-1)
    out = torch._grouped_mm(m.act(g) * u, m.experts.down_proj.transpose(1, 2), offs=offs)
    out = out * w.reshape(-1).index_select(0, order)[:, None].to(h.dtype)
    return h.new_zeros(h.shape).index_add_(0, order // k, out)


def hf_loop(m: MoE, h, w, ids):
    out = torch.zeros_like(h)
    for e in ids.unique().tolist():
        tok, pos = torch.where(ids == e)
        g, u = (h[tok] @ m.experts.gate_up_proj[e].T).split(m.intermediate, dim=-1)
        out.index_add_(0, tok, (m.act(g) * u) @ m.experts.down_proj[e].T * w[tok, pos, None].to(h.dtype))
    return out


def gather_bmm(m: MoE, h, w, ids):
    N, k = ids.shape
    flat = ids.reshape(-1)
    x = h.repeat_interleave(k, dim=0).unsqueeze(-1)  # (P, H, 1): weights on the left, the fast bmm orientation
    gu = torch.bmm(m.experts.gate_up_proj.index_select(0, flat), x).squeeze(-1)
    g, u = gu.split(m.intermediate, dim=-1)
    out = torch.bmm(m.experts.down_proj.index_select(0, flat), (m.act(g) * u).unsqueeze(-1)).view(N, k, -1)
    return (out * w.unsqueeze(-1).to(h.dtype)).sum(1)


VARIANTS = {"dense": dense, "pairs": lambda m, h, w, i: m._pairs(h, w, i),
            "experts": lambda m, h, w, i: m._experts(h, w, i), "gather-bmm": gather_bmm, "grouped_mm": grouped,
            "hf-loop": hf_loop}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=256)
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--tokens", default="1,4,32,128,512")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"hidden {args.hidden}, {args.experts} experts of {args.intermediate}, top-{args.top_k}, "
          f"{torch.get_num_threads()} threads, load {' '.join(Path('/proc/loadavg').read_text().split()[:3])}\n")
    for dtype in (torch.float32, torch.bfloat16):
        m = block(args, dtype)
        print(f"### {str(dtype).removeprefix('torch.')} (ms, median of {args.reps})\n")
        print("| tokens | " + " | ".join(VARIANTS) + " |")
        print("|---" * (len(VARIANTS) + 1) + "|")
        for tokens in map(int, args.tokens.split(",")):
            h = torch.randn(tokens, args.hidden).to(dtype)
            w, ids = m.route(h)
            times: dict[str, list[float]] = {}
            fns = VARIANTS
            with torch.no_grad():
                for fn in fns.values():
                    fn(m, h, w, ids)
                for _ in range(args.reps):
                    for name, fn in fns.items():
                        t = time.perf_counter()
                        fn(m, h, w, ids)
                        times.setdefault(name, []).append((time.perf_counter() - t) * 1e3)
            cells = [f"{statistics.median(times[c]):.2f}" for c in VARIANTS]
            print(f"| {tokens} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main()
