"""Tensor/sequence-parallel decoder modules, configured by `DecoderArch` fields (no per-model code).

Parameter names follow the shared description (neuron_cache.arch CHECKPOINT templates): attention fuses
q/k/v into `attn.qkv_proj` and the MLP gate/up into `mlp.gate_up_proj` (one matmul and one TP region each).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig
from transformers.activations import ACT2FN
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from neuron_cache.arch import DecoderArch
from neuron_train.models.plan import ShardContext
from neuron_train.parallel.dims import ParallelDims
from neuron_train.parallel.layers import ColumnParallelLinear, RowParallelLinear, mark_replicated


class RMSNorm(nn.Module):
    """Same arithmetic as transformers' LlamaRMSNorm (fp32 statistics, weight applied after the cast back)."""

    def __init__(self, size: int, eps: float, *, partial_grad: bool) -> None:
        super().__init__()
        self.weight = mark_replicated(nn.Parameter(torch.ones(size)), partial_grad)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class RotaryEmbedding(nn.Module):
    """Rope frequencies from the Hugging Face config (the description has no rope fields: every rope_type
    transformers knows is computed by transformers' own ROPE_INIT_FUNCTIONS)."""

    def __init__(self, config: PretrainedConfig, head_dim: int) -> None:
        super().__init__()
        rope = config.rope_parameters
        if rope.get("rope_type", "default") == "default":
            inv_freq = 1.0 / (rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
            self.scaling = 1.0
        else:
            inv_freq, self.scaling = ROPE_INIT_FUNCTIONS[rope["rope_type"]](config, None)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @torch.no_grad()
    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.scaling).to(dtype), (emb.sin() * self.scaling).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin  # x (B, h, T, hd), cos/sin (1, 1, T, hd)


class Attention(nn.Module):
    def __init__(self, arch: DecoderArch, dims: ParallelDims, ctx: ShardContext, sp: bool) -> None:
        super().__init__()
        hd, tp = arch.head_dim, dims.tp
        self.head_dim = hd
        self.q_heads = arch.num_heads // tp
        self.kv_heads = ctx.local_size("kv_heads", arch.num_kv_heads * hd) // hd
        self.scaling = arch.scale  # head_dim ** -0.5 unless the description sets attention_scale
        self.qkv_proj = ColumnParallelLinear(
            arch.hidden_size, (arch.num_heads + 2 * arch.num_kv_heads) * hd, dims=dims, bias=arch.qkv_bias,
            sequence_parallel=sp, local_out_features=(self.q_heads + 2 * self.kv_heads) * hd,
        )
        self.o_proj = RowParallelLinear(arch.num_heads * hd, arch.hidden_size, dims=dims, bias=arch.o_bias, sequence_parallel=sp)
        if arch.qk_norm:
            # Replicated (head_dim,) weights, but each rank normalises only its own heads: partial gradients.
            self.q_norm = RMSNorm(hd, arch.rms_norm_eps, partial_grad=True)
            self.k_norm = RMSNorm(hd, arch.rms_norm_eps, partial_grad=True)
        group = dims.kv_replica_group(arch.num_kv_heads)
        if group is not None:
            # Rows past the query block are kv heads copied on `rep` ranks: parallel/grads.py sums them.
            for p in (self.qkv_proj.weight, self.qkv_proj.bias):
                if p is not None:
                    p.nt_kv_rows = (self.q_heads * hd, group, ctx.kv_replicas)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv_proj(x)  # (B, T, (hq + 2 hkv) * hd), T is the full sequence even under SP
        b, t, _ = qkv.shape
        hd = self.head_dim
        q, k, v = qkv.split([self.q_heads * hd, self.kv_heads * hd, self.kv_heads * hd], dim=-1)
        q, k, v = q.view(b, t, -1, hd), k.view(b, t, -1, hd), v.view(b, t, -1, hd)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)  # qwen3: over each head, before rope
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, h, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling, enable_gqa=self.kv_heads != self.q_heads)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, arch: DecoderArch, dims: ParallelDims, sp: bool) -> None:
        super().__init__()
        inter = arch.intermediate_size
        self.gate_up_proj = ColumnParallelLinear(arch.hidden_size, 2 * inter, dims=dims, bias=arch.mlp_bias, sequence_parallel=sp)
        self.down_proj = RowParallelLinear(inter, arch.hidden_size, dims=dims, bias=arch.mlp_bias, sequence_parallel=sp)
        self.act = ACT2FN[arch.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)
