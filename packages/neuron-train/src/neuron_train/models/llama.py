"""Tensor/sequence-parallel Llama for training, loaded from a Hugging Face state dict.

Module names follow transformers' LlamaForCausalLM except for two fused projections: q/k/v become
`self_attn.qkv_proj` and gate/up become `mlp.gate_up_proj` (one matmul and one TP region each).
`LLAMA_PLAN` below says how every parameter is cut out of the HF checkpoint. Qwen3 and Granite
subclass this file and change only what their architectures change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PretrainedConfig
from transformers.activations import ACT2FN
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from neuron_train.models.plan import ParamPlan, ShardContext, lookup, shard, source_names
from neuron_train.parallel.dims import ParallelDims
from neuron_train.parallel.layers import ColumnParallelLinear, ParallelEmbedding, RowParallelLinear, mark_replicated
from neuron_train.parallel.loss import IGNORE_INDEX, vocab_parallel_cross_entropy

_QKV = ParamPlan(dim=0, sources=("q_proj.weight", "k_proj.weight", "v_proj.weight"), kinds=("q_heads", "kv_heads", "kv_heads"))
_QKV_BIAS = ParamPlan(dim=0, sources=("q_proj.bias", "k_proj.bias", "v_proj.bias"), kinds=("q_heads", "kv_heads", "kv_heads"))

LLAMA_PLAN: dict[str, ParamPlan] = {
    "model.embed_tokens.weight": ParamPlan(dim=0),
    "model.layers.*.input_layernorm.weight": ParamPlan(),
    "model.layers.*.self_attn.qkv_proj.weight": _QKV,
    "model.layers.*.self_attn.qkv_proj.bias": _QKV_BIAS,
    "model.layers.*.self_attn.o_proj.weight": ParamPlan(dim=1, kinds=("q_heads",)),
    "model.layers.*.self_attn.o_proj.bias": ParamPlan(),
    "model.layers.*.post_attention_layernorm.weight": ParamPlan(),
    "model.layers.*.mlp.gate_up_proj.weight": ParamPlan(dim=0, sources=("gate_proj.weight", "up_proj.weight")),
    "model.layers.*.mlp.gate_up_proj.bias": ParamPlan(dim=0, sources=("gate_proj.bias", "up_proj.bias")),
    "model.layers.*.mlp.down_proj.weight": ParamPlan(dim=1),
    "model.layers.*.mlp.down_proj.bias": ParamPlan(),
    "model.norm.weight": ParamPlan(),
    "lm_head.weight": ParamPlan(dim=0),
}


@dataclass
class TrainOutput:
    logits: torch.Tensor  # (batch, seq, vocab/tp): this rank's vocabulary shard, full sequence
    loss_sum: torch.Tensor | None  # sum of per-token losses over labelled tokens
    num_tokens: torch.Tensor | None  # number of labelled tokens (labels != -100 after the shift)


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
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        rope = config.rope_parameters
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
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


class LlamaAttention(nn.Module):
    def __init__(self, config: PretrainedConfig, dims: ParallelDims, ctx: ShardContext, sp: bool) -> None:
        super().__init__()
        hd, tp = ctx.head_dim, dims.tp
        self.head_dim = hd
        self.q_heads = ctx.num_heads // tp
        self.kv_heads = ctx.local_size("kv_heads", ctx.num_kv_heads * hd) // hd
        self.scaling = self.attention_scaling(config)
        bias = getattr(config, "attention_bias", False)
        self.qkv_proj = ColumnParallelLinear(
            config.hidden_size, (ctx.num_heads + 2 * ctx.num_kv_heads) * hd, dims=dims, bias=bias,
            sequence_parallel=sp, local_out_features=(self.q_heads + 2 * self.kv_heads) * hd,
        )
        self.o_proj = RowParallelLinear(ctx.num_heads * hd, config.hidden_size, dims=dims, bias=bias, sequence_parallel=sp)
        group = dims.kv_replica_group(ctx.num_kv_heads)
        if group is not None:
            # Rows past the query block are kv heads copied on `rep` ranks: parallel/grads.py sums them.
            for p in (self.qkv_proj.weight, self.qkv_proj.bias):
                if p is not None:
                    p.nt_kv_rows = (self.q_heads * hd, group, ctx.kv_replicas)

    def attention_scaling(self, config: PretrainedConfig) -> float:
        return self.head_dim**-0.5

    def qk_norm(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv_proj(x)  # (B, T, (hq + 2 hkv) * hd), T is the full sequence even under SP
        b, t, _ = qkv.shape
        hd = self.head_dim
        q, k, v = qkv.split([self.q_heads * hd, self.kv_heads * hd, self.kv_heads * hd], dim=-1)
        q, k = self.qk_norm(q.view(b, t, -1, hd), k.view(b, t, -1, hd))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.view(b, t, -1, hd).transpose(1, 2)  # (B, h, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling, enable_gqa=self.kv_heads != self.q_heads)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class LlamaMLP(nn.Module):
    def __init__(self, config: PretrainedConfig, dims: ParallelDims, sp: bool) -> None:
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        inter = config.intermediate_size
        self.gate_up_proj = ColumnParallelLinear(config.hidden_size, 2 * inter, dims=dims, bias=bias, sequence_parallel=sp)
        self.down_proj = RowParallelLinear(inter, config.hidden_size, dims=dims, bias=bias, sequence_parallel=sp)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, model: LlamaForTraining, config: PretrainedConfig, dims: ParallelDims, ctx: ShardContext, sp: bool) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, partial_grad=sp)
        self.self_attn = model.attention_cls(config, dims, ctx, sp)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, partial_grad=sp)
        self.mlp = LlamaMLP(config, dims, sp)
        self.residual_multiplier = model.residual_multiplier(config)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin) * self.residual_multiplier
        return h + self.mlp(self.post_attention_layernorm(h)) * self.residual_multiplier


class _Body(nn.Module):
    """Holds the `model.` prefix so parameter names match the HF checkpoint."""

    def __init__(self, top: LlamaForTraining, config: PretrainedConfig, dims: ParallelDims, ctx: ShardContext, sp: bool) -> None:
        super().__init__()
        self.embed_tokens = ParallelEmbedding(config.vocab_size, config.hidden_size, dims=dims, sequence_parallel=sp)
        self.layers = nn.ModuleList(LlamaDecoderLayer(top, config, dims, ctx, sp) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, partial_grad=sp)


class LlamaForTraining(nn.Module):
    PLAN: ClassVar[dict[str, ParamPlan]] = LLAMA_PLAN
    attention_cls: ClassVar[type[LlamaAttention]] = LlamaAttention

    def __init__(
        self,
        config: PretrainedConfig,
        dims: ParallelDims,
        *,
        sequence_parallel: bool = False,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.config, self.dims = config, dims
        self.sequence_parallel = sequence_parallel and dims.tp > 1
        self.gradient_checkpointing = gradient_checkpointing
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.ctx = ShardContext(dims.tp, config.num_attention_heads, config.num_key_value_heads, head_dim)
        sp = self.sequence_parallel
        self.model = _Body(self, config, dims, self.ctx, sp)
        self.lm_head = ColumnParallelLinear(config.hidden_size, config.vocab_size, dims=dims, sequence_parallel=sp)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.rotary = RotaryEmbedding(config)
        self.reset_parameters()

    # -- architecture hooks (Granite overrides these) ------------------------------------------
    def residual_multiplier(self, config: PretrainedConfig) -> float:
        return 1.0

    def scale_embeddings(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def scale_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    # -- weights ---------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """Random init (for from-scratch tests); checkpoints overwrite it via load_hf_state_dict."""
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, std)

    @torch.no_grad()
    def load_hf_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy this rank's shard of every parameter out of a full HF state dict."""
        used: set[str] = set()
        for name, param in self.named_parameters():
            if ".lora." in name:
                continue
            plan = lookup(self.PLAN, name)
            srcs = source_names(name, plan)
            missing = [s for s in srcs if s not in state_dict]
            if missing:
                raise KeyError(f"checkpoint lacks {missing} needed for {name!r}; is it a {self.config.model_type} checkpoint?")
            param.copy_(shard([state_dict[s] for s in srcs], plan, self.ctx, self.dims.tp_rank))
            used.update(srcs)
        # A tied checkpoint may still carry lm_head.weight (equal to the embedding).
        unexpected = sorted(k for k in state_dict if k not in used and not k.endswith("rotary_emb.inv_freq") and k != "lm_head.weight")
        if unexpected:
            raise KeyError(f"checkpoint tensors not used by {type(self).__name__}: {unexpected[:8]}")

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> TrainOutput:
        t = input_ids.shape[1]
        if self.sequence_parallel and t % self.dims.tp != 0:
            raise ValueError(
                f"sequence length {t} must be a multiple of tensor_parallel_size={self.dims.tp} with sequence_parallel; "
                "pad batches with pad_to_multiple_of=tensor_parallel_size."
            )
        h = self.scale_embeddings(self.model.embed_tokens(input_ids))  # (B, T/tp under SP, H)
        cos, sin = self.rotary(torch.arange(t, device=input_ids.device), h.dtype)
        cos, sin = cos[None, None], sin[None, None]
        for layer in self.model.layers:
            if self.gradient_checkpointing and self.training:
                h = checkpoint(layer, h, cos, sin, use_reentrant=False)
            else:
                h = layer(h, cos, sin)
        logits = self.scale_logits(self.lm_head(self.model.norm(h)))  # (B, T, V/tp)
        if labels is None:
            return TrainOutput(logits, None, None)
        shifted = torch.full_like(labels, IGNORE_INDEX)
        shifted[:, :-1] = labels[:, 1:]
        loss = vocab_parallel_cross_entropy(logits, shifted, vocab_start=self.model.embed_tokens.vocab_start, group=self.dims.tp_group)
        return TrainOutput(logits, loss.sum(), (shifted != IGNORE_INDEX).sum())

