"""LoRA on the parallel linears, sharded like its host layer, saved in PEFT's format.

Adapters are named after the Hugging Face modules they adapt (q_proj, k_proj, ...), even where the
host fuses several of them: a fused qkv_proj carries one (A, B) pair per targeted segment, so the
math is exactly PEFT's per-module LoRA and the saved adapter loads with `PeftModel.from_pretrained`.

Sharding follows the host: on a column-parallel host A (r, in) is whole on every rank and B
(out/tp, r) is split like the host's rows; on a row-parallel host A (r, in/tp) is split like the
host's columns and B (out, r) is whole. The whole factor sees only this rank's share of the work,
so its gradient is summed over TP.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from neuron_train.models.plan import ParamPlan, SplitKind, lookup, shard, source_names
from neuron_train.parallel.layers import ColumnParallelLinear, RowParallelLinear, mark_replicated

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(kw_only=True)
class LoraConfig:
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0  # dropout masks differ across TP ranks; keep 0 for tp-invariant results
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    init_seed: int = 0  # A is drawn from (init_seed, module name): the same at every tp degree

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        unknown = sorted(set(self.target_modules) - set(ALL_LINEAR))
        if unknown:
            raise ValueError(f"target_modules contains {unknown}; allowed: {list(ALL_LINEAR)}.")
        if self.r < 1:
            raise ValueError(f"r={self.r} must be >= 1.")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HostInfo:
    """How a host layer's adapters shard, derived from the model's plan entry for its weight."""

    column: bool  # column-parallel host (plan dim 0) or row-parallel (plan dim 1)
    segments: tuple[str, ...]  # HF module names (q_proj, ...), in fused order
    kinds: tuple[SplitKind, ...] = field(default=())
    hf_modules: tuple[str, ...] = ()  # the HF module each segment adapts (model.layers.0.self_attn.q_proj)
    sizes: tuple[int, ...] = ()  # full output sizes of the fused segments (column hosts)

    @classmethod
    def from_plan(cls, plan: dict[str, ParamPlan], host_name: str) -> HostInfo:
        p = lookup(plan, f"{host_name}.weight")
        hf_modules = tuple(s.rsplit(".", 1)[0] for s in source_names(f"{host_name}.weight", p))
        segments = tuple(m.rsplit(".", 1)[-1] for m in hf_modules)
        kinds = p.kinds if len(p.kinds) == len(segments) else p.kinds * len(segments)
        return cls(column=p.dim == 0, segments=segments, kinds=tuple(kinds), hf_modules=hf_modules, sizes=p.segments)

    def factor_plan(self, factor: str, segment: str) -> ParamPlan:
        """Plan of lora_A / lora_B for one segment (dim None = whole on every rank)."""
        kind = self.kinds[self.segments.index(segment)]
        if self.column:
            return ParamPlan(dim=0, kinds=(kind,)) if factor == "B" else ParamPlan()
        return ParamPlan(dim=1, kinds=(kind,)) if factor == "A" else ParamPlan()


class LoraAdapter(nn.Module):
    def __init__(self, host: nn.Module, host_name: str, info: HostInfo, cfg: LoraConfig, model: nn.Module) -> None:
        super().__init__()
        self.scaling, self.column = cfg.scaling, info.column
        self.dropout = nn.Dropout(cfg.lora_dropout) if cfg.lora_dropout > 0 else nn.Identity()
        self.lora_A, self.lora_B = nn.ParameterDict(), nn.ParameterDict()
        ctx, rank = model.ctx, model.dims.tp_rank
        self.segment_sizes: list[tuple[str, int]] = []
        out_sizes = _segment_out_sizes(host, info, ctx)
        in_full = host.in_features
        for seg, out_local in zip(info.segments, out_sizes):
            self.segment_sizes.append((seg, out_local))
            if seg not in cfg.target_modules:
                continue
            g = torch.Generator().manual_seed(cfg.init_seed * 1_000_003 + zlib.crc32(f"{host_name}.{seg}".encode()))
            bound = 1.0 / math.sqrt(in_full)  # PEFT's default: kaiming_uniform_(a=sqrt(5))
            a_full = torch.empty(cfg.r, in_full).uniform_(-bound, bound, generator=g)
            a = shard([a_full], info.factor_plan("A", seg), ctx, rank)
            b = torch.zeros(out_local if info.column else host.out_features, cfg.r)
            self.lora_A[seg] = nn.Parameter(a.contiguous())
            self.lora_B[seg] = nn.Parameter(b)
            mark_replicated(self.lora_A[seg] if info.column else self.lora_B[seg], partial_grad=True)
            kind = info.kinds[info.segments.index(seg)]
            if info.column and kind == "kv_heads" and ctx.kv_replicas > 1:
                # B of a replicated kv head: copies on `rep` ranks, summed like the host's kv rows.
                self.lora_B[seg].nt_kv_rows = (0, model.dims.kv_replica_group(ctx.num_kv_heads), ctx.kv_replicas)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        outs = []
        for seg, n in self.segment_sizes:
            if seg in self.lora_A:
                outs.append((x @ self.lora_A[seg].t()) @ self.lora_B[seg].t() * self.scaling)
            else:
                outs.append(x.new_zeros((*x.shape[:-1], n)))  # an untargeted segment of a fused host
        return torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]


def _segment_out_sizes(host: nn.Module, info: HostInfo, ctx) -> list[int]:
    if not info.column:
        return [host.out_features]
    if len(info.segments) == 1:
        return [host.local_out_features]
    return [ctx.local_size(k, n) for k, n in zip(info.kinds, info.sizes)]


def inject_lora(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Attach adapters to every parallel linear holding a targeted module; freeze everything else.

    Returns the host layer names that received adapters.
    """
    _refuse_expert_targets(model, cfg)
    hosts = []
    for name, module in model.named_modules():
        if not isinstance(module, (ColumnParallelLinear, RowParallelLinear)) or name == "lm_head":
            continue
        info = HostInfo.from_plan(model.PLAN, name)
        if set(info.segments) & set(cfg.target_modules):
            module.lora = LoraAdapter(module, name, info, cfg, model)
            hosts.append(name)
    if not hosts:
        raise ValueError(f"target_modules={list(cfg.target_modules)} matched no layer of {type(model).__name__}.")
    for name, p in model.named_parameters():
        p.requires_grad_(".lora." in name)
    model.lora_config = cfg
    return hosts


def _refuse_expert_targets(model: nn.Module, cfg: LoraConfig) -> None:
    """Experts are stacked parameters, not linears: PEFT-style LoRA on them is not implemented, and silently
    adapting only the dense layers' MLPs would train a different model than asked for."""
    arch = getattr(model, "arch", None)
    mlp = sorted(set(cfg.target_modules) & {"gate_proj", "up_proj", "down_proj"})
    if arch is None or not arch.num_experts or not mlp:
        return
    moe = [i for i in range(arch.num_layers) if arch.is_moe_layer(i)]
    raise ValueError(
        f"target_modules={list(cfg.target_modules)} includes {mlp}, but layers {moe} of this {arch.model_type} "
        "model are routed experts, which LoRA does not adapt; target attention only (q_proj, k_proj, v_proj, o_proj)."
    )
