"""The tensor/sequence-parallel causal LM for training, built from a `DecoderArch` (any described family).

Parameter names are the shared description's CHECKPOINT templates (`layers.{i}.attn.qkv_proj.weight`);
the plan derived from the description (derive.py) says how each is cut out of a Hugging Face checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PretrainedConfig

from neuron_cache.arch import DecoderArch
from neuron_train.models.derive import derive_plan, describe
from neuron_train.models.modules import MLP, Attention, RMSNorm, RotaryEmbedding
from neuron_train.models.moe import MoE, load_balancing_loss
from neuron_train.models.plan import ParamPlan, ShardContext, assemble, lookup, shard, source_names, split_segments
from neuron_train.parallel.dims import ParallelDims
from neuron_train.parallel.layers import ColumnParallelLinear, ParallelEmbedding
from neuron_train.parallel.loss import IGNORE_INDEX, vocab_parallel_cross_entropy


@dataclass
class TrainOutput:
    logits: torch.Tensor  # (batch, seq, vocab/tp): this rank's vocabulary shard, full sequence
    loss_sum: torch.Tensor | None  # sum of per-token losses over labelled tokens
    num_tokens: torch.Tensor | None  # number of labelled tokens (labels != -100 after the shift)
    # router_aux_loss_coef * load-balancing loss (what transformers adds to its mean loss); None without MoE
    router_aux_loss: torch.Tensor | None = None


class DecoderLayer(nn.Module):
    def __init__(self, arch: DecoderArch, layer: int, dims: ParallelDims, ctx: ShardContext, sp: bool) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps, partial_grad=sp)
        self.attn = Attention(arch, dims, ctx, sp)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps, partial_grad=sp)
        if arch.is_moe_layer(layer):
            self.moe = MoE(arch, dims)
        else:
            self.mlp = MLP(arch, dims, sp)
        self.residual_multiplier = arch.residual_multiplier

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = h + self.attn(self.input_layernorm(h), cos, sin) * self.residual_multiplier
        x = self.post_attention_layernorm(h)
        if hasattr(self, "moe"):
            y, router_logits = self.moe(x)
            return h + y * self.residual_multiplier, router_logits
        return h + self.mlp(x) * self.residual_multiplier, None


class DecoderForTraining(nn.Module):
    """Every neuron_cache.arch family whose DecoderArch passes derive.check_supported."""

    PLAN: dict[str, ParamPlan]  # set per instance: derived from the architecture description

    def __init__(
        self,
        config: PretrainedConfig,
        dims: ParallelDims,
        *,
        sequence_parallel: bool = False,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        family, arch = describe(config)
        self.config, self.arch, self.dims = config, arch, dims
        self.PLAN = derive_plan(family, arch)
        self.sequence_parallel = sequence_parallel and dims.tp > 1
        if self.sequence_parallel and arch.num_experts:
            raise ValueError(
                f"sequence_parallel=True with {arch.model_type} (num_experts={arch.num_experts}): the replicated router "
                "needs the whole sequence on every rank, which sequence parallelism shards; pass "
                "sequence_parallel=False (NeuronTrainingArguments and build_model) for mixture-of-experts models."
            )
        self.gradient_checkpointing = gradient_checkpointing
        self.ctx = ShardContext(dims.tp, arch.num_heads, arch.num_kv_heads, arch.head_dim)
        sp = self.sequence_parallel
        self.embed_tokens = ParallelEmbedding(arch.vocab_size, arch.hidden_size, dims=dims, sequence_parallel=sp)
        self.layers = nn.ModuleList(DecoderLayer(arch, i, dims, self.ctx, sp) for i in range(arch.num_layers))
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps, partial_grad=sp)
        self.lm_head = ColumnParallelLinear(arch.hidden_size, arch.vocab_size, dims=dims, sequence_parallel=sp)
        if arch.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = RotaryEmbedding(config, arch.head_dim)
        for name, _ in self.named_parameters():
            lookup(self.PLAN, name)  # every parameter is in the description, or construction fails here
        self.reset_parameters()

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
        """Copy this rank's shard of every parameter out of a full Hugging Face checkpoint state dict."""
        used: set[str] = set()
        for name, param in self.named_parameters():
            if ".lora." in name:
                continue
            plan = lookup(self.PLAN, name)
            srcs = source_names(name, plan, self.arch.num_experts)
            missing = [s for s in srcs if s not in state_dict]
            if missing:
                raise KeyError(f"checkpoint lacks {missing[:4]} needed for {name!r}; is it a {self.arch.model_type} checkpoint?")
            full = assemble(state_dict, name, plan, self.arch.num_experts)
            param.copy_(shard(split_segments(full, plan), plan, self.ctx, self.dims.tp_rank))
            used.update(srcs)
        # A tied checkpoint may still carry lm_head.weight (equal to the embedding).
        unexpected = sorted(k for k in state_dict if k not in used and not k.endswith("rotary_emb.inv_freq") and k != "lm_head.weight")
        if unexpected:
            raise KeyError(f"checkpoint tensors not used by the {self.arch.model_type} training model: {unexpected[:8]}")

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> TrainOutput:
        """`attention_mask` only masks padding out of the router load-balancing loss, as transformers does;
        attention itself is causal, and right padding cannot reach earlier tokens."""
        t = input_ids.shape[1]
        if self.sequence_parallel and t % self.dims.tp != 0:
            raise ValueError(
                f"sequence length {t} must be a multiple of tensor_parallel_size={self.dims.tp} with sequence_parallel; "
                "pad batches with pad_to_multiple_of=tensor_parallel_size."
            )
        h = self.embed_tokens(input_ids) * self.arch.embedding_multiplier  # (B, T/tp under SP, H)
        cos, sin = self.rotary(torch.arange(t, device=input_ids.device), h.dtype)
        cos, sin = cos[None, None], sin[None, None]
        router_logits = []
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                h, logits = checkpoint(layer, h, cos, sin, use_reentrant=False)
            else:
                h, logits = layer(h, cos, sin)
            if logits is not None:
                router_logits.append(logits)
        logits = self.lm_head(self.norm(h)) / self.arch.logits_divisor  # (B, T, V/tp)
        aux = None
        if router_logits and self.arch.router_aux_loss_coef:
            aux = self.arch.router_aux_loss_coef * load_balancing_loss(
                router_logits, self.arch.num_experts, self.arch.num_experts_per_tok, attention_mask)
        if labels is None:
            return TrainOutput(logits, None, None, aux)
        shifted = torch.full_like(labels, IGNORE_INDEX)
        shifted[:, :-1] = labels[:, 1:]
        loss = vocab_parallel_cross_entropy(logits, shifted, vocab_start=self.embed_tokens.vocab_start, group=self.dims.tp_group)
        return TrainOutput(logits, loss.sum(), (shifted != IGNORE_INDEX).sum(), aux)
