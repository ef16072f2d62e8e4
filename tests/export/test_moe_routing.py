"""The routed-experts block (models/moe.py) on its own: only selected experts are computed, the expert-parallel and
tensor-parallel splits sum to the whole block, and AOTInductor compiles both the decode and the prefill layout."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from neuron_cache.arch.spec import DecoderArch
from neuron_export.models import moe
from neuron_export.models.parallel import rank_arch

H, F, E, K = 32, 24, 8, 2  # hidden, each expert's intermediate size, experts, top-k
ARCH = DecoderArch(model_type="qwen3_moe", vocab_size=16, hidden_size=H, intermediate_size=40, num_layers=1,
                   num_heads=4, num_kv_heads=4, head_dim=8, rms_norm_eps=1e-6, num_experts=E, num_experts_per_tok=K,
                   norm_topk_prob=False, moe_intermediate_size=F)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Fixed inputs: a bf16 near-tie in the top-k could route the compiled and the eager block differently."""
    torch.manual_seed(0)


def block(arch: DecoderArch = ARCH, tp: int = 1, ep: int = 1, seed: int = 0) -> moe.MoE:
    module = moe.MoE(rank_arch(arch, tp, ep), tp=tp, ep=ep)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module.eval()


def dense_reference(m: moe.MoE, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, weighted by the routing (0 for unselected experts): the definition."""
    h = x.reshape(-1, x.shape[-1])
    weights, ids = m.route(h)
    gate = torch.zeros(h.shape[0], m.local_experts).scatter_(1, ids, weights)
    gu = torch.einsum("nh,eih->nei", h, m.experts.gate_up_proj)
    g, u = gu.split(m.intermediate, dim=-1)
    out = torch.einsum("nei,ehi->neh", m.act(g) * u, m.experts.down_proj)
    return (out * gate[..., None]).sum(1).view_as(x)


def expert_flops(m: moe.MoE, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        m(x)
    router = 2 * x.shape[0] * x.shape[1] * H * E
    return counter.get_total_flops() - router


@pytest.mark.parametrize("tokens", [1, 3, 8, 40])
def test_matches_dense_definition(tokens):
    m, x = block(), torch.randn(1, tokens, H)
    with torch.no_grad():
        torch.testing.assert_close(m(x), dense_reference(m, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tokens", [2, 40])
def test_only_selected_pairs_are_computed(tokens):
    """Decode (2 tokens: pair by pair) and prefill (40: expert by expert) both run exactly tokens x top-k expert
    MLPs, where the dense block would run tokens x 8."""
    m, x = block(), torch.randn(1, tokens, H)
    assert moe.per_pair(tokens * K, E) == (tokens == 2)
    assert expert_flops(m, x) == tokens * K * 2 * (3 * F * H)


def test_decode_graph_reads_expert_views():
    """The traced decode graph selects each pair's expert weights (a view: aten.select on the stacked parameter by
    an id read in the graph), with no matmul over all experts and no copy of expert weights."""
    m = block()
    program = torch.export.export(m, (torch.randn(2, 1, H),))
    nodes = list(program.graph.nodes)
    selects = [n for n in nodes if n.target == torch.ops.aten.select.int and "experts" in str(n.args[0])]
    assert len(selects) == 2 * 2 * K
    assert not any(n.target in (torch.ops.aten.bmm.default, torch.ops.aten.index_select.default)
                   and "experts" in str(n.args[0]) for n in nodes)


@pytest.mark.parametrize("tokens", [2, 40])
@pytest.mark.parametrize("tp,ep", [(2, 1), (2, 2), (4, 2)])
def test_rank_shares_sum_to_the_block(tp, ep, tokens, monkeypatch):
    """Each rank's experts (dim 0, by expert group) and hidden slice (dim 1/2), cut as convert.shard cuts them,
    with its expert_offset: the ranks' partial outputs sum to the whole block (what the graph's all_reduce does)."""
    from neuron_export.convert import shard

    monkeypatch.setattr(moe, "all_reduce", lambda y, _tp: y)  # the test sums the ranks' partial outputs itself
    whole, x = block(), torch.randn(1, tokens, H)
    parts = []
    for rank in range(tp):
        m = block(tp=tp, ep=ep)
        m.router.weight.data.copy_(whole.router.weight)
        gu = shard(whole.experts.gate_up_proj.data, 1, [F, F], tp, expert_dim=0, ep=ep)[rank]
        down = shard(whole.experts.down_proj.data, 2, None, tp, expert_dim=0, ep=ep)[rank]
        m.experts.gate_up_proj.data.copy_(gu)
        m.experts.down_proj.data.copy_(down)
        for name, value in m.rank_buffers(rank).items():
            m.get_buffer(name).copy_(value)
        with torch.no_grad():
            parts.append(m(x))
    with torch.no_grad():
        torch.testing.assert_close(sum(parts), whole(x), rtol=1e-5, atol=1e-5)


def test_expert_parallel_errors():
    from neuron_export.models.parallel import TensorParallelError

    with pytest.raises(TensorParallelError, match=r"expert_parallel_size=3 must divide tensor_parallel_size=4"):
        rank_arch(ARCH, 4, 3)
    with pytest.raises(TensorParallelError, match=r"expert_parallel_size=4 does not divide num_experts=6"):
        rank_arch(DecoderArch(**{**{f: getattr(ARCH, f) for f in ARCH.__slots__}, "num_experts": 6}), 4, 4)
    dense = DecoderArch(**{**{f: getattr(ARCH, f) for f in ARCH.__slots__}, "num_experts": 0, "num_experts_per_tok": 0})
    with pytest.raises(TensorParallelError, match=r"expert_parallel_size=2: model type qwen3_moe has no routed experts"):
        rank_arch(dense, 2, 2)
    # each expert's 24 hidden rows over 16 ranks (ep 1) or over the 10 / 2 = 5 ranks of a group: neither splits evenly
    with pytest.raises(TensorParallelError, match=r"moe_intermediate_size=24 .* tp / ep = 16 ranks"):
        rank_arch(ARCH, 16, 1)
    with pytest.raises(TensorParallelError, match=r"moe_intermediate_size=24 .* tp / ep = 5 ranks"):
        rank_arch(ARCH, 10, 2)


class _BothLayouts(torch.nn.Module):
    """A decode step (2 rows: pair by pair) and a prefill (32 tokens: expert by expert), float32 and bfloat16
    (whose scatter ops AOTInductor runs through another path), in one graph."""

    def __init__(self):
        super().__init__()
        self.fp32, self.bf16 = block(), block().to(torch.bfloat16)

    def forward(self, decode: torch.Tensor, prefill: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.fp32(decode), self.fp32(prefill), self.bf16(decode.bfloat16()), self.bf16(prefill.bfloat16()))


def test_aot_inductor_compiles_both_layouts(tmp_path):
    """The one AOTInductor compile of these tests (~10-20 s): sort, data-dependent expert runs, C++."""
    module, inputs = _BothLayouts(), (torch.randn(2, 1, H), torch.randn(1, 32, H))
    with torch.no_grad():
        program = torch.export.export(module, inputs)
        path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "moe.pt2"))
        compiled = torch._inductor.aoti_load_package(path)
        for got, want in zip(compiled(*inputs), module(*inputs)):
            if got.dtype == torch.float32:
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            else:  # Inductor keeps fused bf16 intermediates in fp32: a few outputs differ by a bf16 rounding or two
                assert (got.float() - want.float()).abs().max() <= 0.02 * want.float().abs().max()
