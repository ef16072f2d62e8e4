"""The tensor-parallel plan recorded in artifacts: shard every parameter of a tiny decoder for tp=2 and
tp=4, check each rank's slice against the *Hugging Face* tensors it must come from (matching q, k and
v heads; matching gate and up rows), and check that unshard gives the original back bit for bit."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import transformers
from support.tiny import tiny_hf_model

from neuron_export.convert import shard, sharding_plan, unshard
from neuron_export.models.build import bind_checkpoint, build_decoder
from neuron_export.models.spec import StaticShapes

# heads 8 / kv heads 4 / head_dim 8 != 48/8, intermediate 40, vocab 64: divisible by 2 and 4
SIZES = dict(vocab_size=64, hidden_size=48, intermediate_size=40, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=4, head_dim=8, max_position_embeddings=32, pad_token_id=None, bos_token_id=1,
             eos_token_id=2)
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**SIZES, tie_word_embeddings=False),
    "qwen2": lambda: transformers.Qwen2Config(**SIZES, tie_word_embeddings=False),  # q/k/v biases
    "qwen3": lambda: transformers.Qwen3Config(**SIZES, tie_word_embeddings=True),  # q/k norms, tied
    "phi3": lambda: transformers.Phi3Config(**SIZES, tie_word_embeddings=False),  # qkv and gate_up fused in HF
}
TPS = [2, 4]


@dataclass
class Decoder:
    name: str
    hf_state: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]  # ours, after conversion (fused qkv, gate_up)
    plan: dict[str, dict]
    config: object


@pytest.fixture(scope="module", params=list(CONFIGS))
def decoder(request) -> Decoder:
    config = CONFIGS[request.param]()
    hf_state = tiny_hf_model(config, seed=3).state_dict()
    family, model = build_decoder(config, StaticShapes(batch_size=1, sequence_length=16, context_buckets=[16]))
    weights = bind_checkpoint(family, model, hf_state)
    return Decoder(request.param, hf_state, weights, sharding_plan(family, model), config)


def hf_rows(d: Decoder, layer: int, which: str) -> torch.Tensor:
    """The HF weight (out, in) for q, k, v, gate or up of `layer`, cut out of phi3's fused tensors if needed."""
    c, hd = d.config, SIZES["head_dim"]
    attn, mlp = f"model.layers.{layer}.self_attn", f"model.layers.{layer}.mlp"
    if d.name != "phi3":
        return d.hf_state[f"{attn}.{which}_proj.weight" if which in "qkv" else f"{mlp}.{which}_proj.weight"]
    q, kv, inter = c.num_attention_heads * hd, c.num_key_value_heads * hd, c.intermediate_size
    qkv, gate_up = d.hf_state[f"{attn}.qkv_proj.weight"], d.hf_state[f"{mlp}.gate_up_proj.weight"]
    return {"q": qkv[:q], "k": qkv[q:q + kv], "v": qkv[q + kv:], "gate": gate_up[:inter], "up": gate_up[inter:]}[which]


def test_plan_covers_every_parameter(decoder: Decoder):
    assert set(decoder.plan) == set(decoder.weights)
    c, hd = decoder.config, SIZES["head_dim"]
    qkv = [c.num_attention_heads * hd, c.num_key_value_heads * hd, c.num_key_value_heads * hd]
    expected = {  # Megatron layout: column-parallel in, row-parallel out, vocabulary-parallel embeddings
        "attn.qkv_proj.weight": (0, qkv), "attn.qkv_proj.bias": (0, qkv), "attn.o_proj.weight": (1, None),
        "mlp.gate_up_proj.weight": (0, [c.intermediate_size] * 2), "mlp.down_proj.weight": (1, None),
        "embed_tokens.weight": (0, None), "lm_head.weight": (0, None),
    }
    for name, spec in decoder.plan.items():
        key = next((k for k in expected if name.endswith(k)), None)
        want = expected[key] if key else (None, None)  # norms (and q/k norms) are replicated
        assert (spec["partition_dim"], spec["segments"]) == want, name
    assert ("lm_head.weight" in decoder.plan) != c.tie_word_embeddings  # tied: one tensor, one plan entry


@pytest.mark.parametrize("tp", TPS)
def test_shard_shapes_and_exact_roundtrip(decoder: Decoder, tp: int):
    for name, w in decoder.weights.items():
        spec = decoder.plan[name]
        dim = spec["partition_dim"]
        shards = shard(w, dim, spec["segments"], tp)
        assert len(shards) == tp
        for s in shards:
            want = list(w.shape)
            if dim is not None:
                want[dim] //= tp
            assert list(s.shape) == want, f"{name}: shard shape {list(s.shape)} != {want}"
            if dim is None:
                assert torch.equal(s, w), name
        assert torch.equal(unshard(shards, dim, spec["segments"]), w), f"{name}: unshard(shard(w)) != w"


@pytest.mark.parametrize("tp", TPS)
def test_each_rank_holds_matching_heads(decoder: Decoder, tp: int):
    """Rank r's fused qkv holds q heads r*nh/tp.. and the k/v heads they attend to; o_proj the same heads'
    columns; gate_up the same intermediate rows of gate and of up; down_proj their columns."""
    c, hd = decoder.config, SIZES["head_dim"]
    nh, nkv, inter = c.num_attention_heads, c.num_key_value_heads, c.intermediate_size
    q_r, kv_r, i_r = nh // tp * hd, nkv // tp * hd, inter // tp
    for layer in range(c.num_hidden_layers):
        p = f"layers.{layer}."
        qkv = shard(decoder.weights[p + "attn.qkv_proj.weight"], 0, decoder.plan[p + "attn.qkv_proj.weight"]["segments"], tp)
        o = shard(decoder.weights[p + "attn.o_proj.weight"], 1, None, tp)
        gate_up = shard(decoder.weights[p + "mlp.gate_up_proj.weight"], 0,
                        decoder.plan[p + "mlp.gate_up_proj.weight"]["segments"], tp)
        down = shard(decoder.weights[p + "mlp.down_proj.weight"], 1, None, tp)
        hf_o = decoder.hf_state[f"model.{p}self_attn.o_proj.weight"]
        hf_down = decoder.hf_state[f"model.{p}mlp.down_proj.weight"]
        for r in range(tp):
            q, k, v = qkv[r].split([q_r, kv_r, kv_r])
            # GQA: q head h reads kv head h // (nh / nkv), so q heads [r*nh/tp, (r+1)*nh/tp) need kv heads
            # [r*nkv/tp, (r+1)*nkv/tp): the same rank must hold them.
            assert torch.equal(q, hf_rows(decoder, layer, "q")[r * q_r:(r + 1) * q_r]), f"{p} rank {r} q"
            assert torch.equal(k, hf_rows(decoder, layer, "k")[r * kv_r:(r + 1) * kv_r]), f"{p} rank {r} k"
            assert torch.equal(v, hf_rows(decoder, layer, "v")[r * kv_r:(r + 1) * kv_r]), f"{p} rank {r} v"
            assert torch.equal(o[r], hf_o[:, r * q_r:(r + 1) * q_r]), f"{p} rank {r} o_proj"
            gate, up = gate_up[r].split([i_r, i_r])
            assert torch.equal(gate, hf_rows(decoder, layer, "gate")[r * i_r:(r + 1) * i_r]), f"{p} rank {r} gate"
            assert torch.equal(up, hf_rows(decoder, layer, "up")[r * i_r:(r + 1) * i_r]), f"{p} rank {r} up"
            assert torch.equal(down[r], hf_down[:, r * i_r:(r + 1) * i_r]), f"{p} rank {r} down_proj"
        if decoder.name == "qwen2":
            bias = shard(decoder.weights[p + "attn.qkv_proj.bias"], 0, decoder.plan[p + "attn.qkv_proj.bias"]["segments"], tp)
            for r in range(tp):
                q, k, v = bias[r].split([q_r, kv_r, kv_r])
                for part, got, n in (("q", q, q_r), ("k", k, kv_r), ("v", v, kv_r)):
                    want = decoder.hf_state[f"model.{p}self_attn.{part}_proj.bias"][r * n:(r + 1) * n]
                    assert torch.equal(got, want), f"{p} rank {r} {part} bias"


@pytest.mark.parametrize("tp", TPS)
def test_row_parallel_partial_sums_equal_full_mlp(decoder: Decoder, tp: int):
    """What the shards are for: each rank's MLP on its slices, summed over ranks (the all-reduce), is the full MLP."""
    w_gu, w_down = decoder.weights["layers.0.mlp.gate_up_proj.weight"], decoder.weights["layers.0.mlp.down_proj.weight"]
    x = torch.randn(3, w_gu.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def mlp(gu: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
        gate, up = (x @ gu.double().T).chunk(2, dim=-1)
        return (torch.nn.functional.silu(gate) * up) @ down.double().T

    gu_shards = shard(w_gu, 0, decoder.plan["layers.0.mlp.gate_up_proj.weight"]["segments"], tp)
    down_shards = shard(w_down, 1, None, tp)
    partial = sum(mlp(g, d) for g, d in zip(gu_shards, down_shards))
    torch.testing.assert_close(partial, mlp(w_gu, w_down), rtol=1e-12, atol=1e-12)


def test_sanity_swapped_ranks_fail(decoder: Decoder):
    """The checks above can fail: reassembling shards in the wrong rank order is not the original."""
    name = "layers.0.attn.qkv_proj.weight"
    spec = decoder.plan[name]
    shards = shard(decoder.weights[name], 0, spec["segments"], 2)
    assert not torch.equal(unshard(shards[::-1], 0, spec["segments"]), decoder.weights[name])


@pytest.mark.parametrize(("name", "tp", "size"), [
    ("layers.0.attn.qkv_proj.weight", 3, 64),  # the q segment: 8 heads * 8 over 3 ranks
    ("layers.0.mlp.down_proj.weight", 3, 40),  # intermediate 40 over 3 ranks, along dim 1
    ("embed_tokens.weight", 5, 64),  # vocabulary 64 over 5 ranks
])
def test_indivisible_size_raises_clear_error(decoder: Decoder, name: str, tp: int, size: int):
    spec = decoder.plan[name]
    with pytest.raises(ValueError, match=rf"size-{size} segment along dim {spec['partition_dim']}.*tensor_parallel_size={tp}"):
        shard(decoder.weights[name], spec["partition_dim"], spec["segments"], tp)


@pytest.mark.parametrize("decoder", ["llama"], indirect=True)
def test_splitting_a_head_across_ranks_raises(decoder: Decoder):
    name = "layers.0.attn.qkv_proj.weight"
    spec = decoder.plan[name]
    with pytest.raises(ValueError):
        shard(decoder.weights[name], spec["partition_dim"], spec["segments"], 8, spec["granule"])


@pytest.mark.parametrize("decoder", ["llama"], indirect=True)
def test_kv_heads_fewer_than_ranks_are_replicated_beside_their_q_heads(decoder: Decoder):
    """8 q heads / 4 kv heads over 8 ranks: rank r holds q head r and kv head r // 2, the one q head r reads."""
    c, hd = decoder.config, SIZES["head_dim"]
    name = "layers.1.attn.qkv_proj.weight"
    spec = decoder.plan[name]
    assert spec["replicable"] == [False, True, True]
    shards = shard(decoder.weights[name], 0, spec["segments"], 8, spec["granule"], replicable=spec["replicable"])
    for r, s in enumerate(shards):
        q, k, v = s.split([hd, hd, hd])
        group = r // (c.num_attention_heads // c.num_key_value_heads)
        assert torch.equal(q, hf_rows(decoder, 1, "q")[r * hd:(r + 1) * hd])
        assert torch.equal(k, hf_rows(decoder, 1, "k")[group * hd:(group + 1) * hd])
        assert torch.equal(v, hf_rows(decoder, 1, "v")[group * hd:(group + 1) * hd])
    # q heads and row-parallel weights are never replicated: 16 ranks would split or duplicate them
    with pytest.raises(ValueError, match="in whole heads of 8"):
        shard(decoder.weights[name], 0, spec["segments"], 16, spec["granule"], replicable=spec["replicable"])


@pytest.mark.parametrize("decoder", ["llama"], indirect=True)
def test_vocab_and_partial_layouts(decoder: Decoder):
    """Vocabulary rows padded to ceil(vocab / tp) plus a zero row per rank; a partial tensor on rank 0 only."""
    w = decoder.weights["embed_tokens.weight"]  # 64 rows
    shards = shard(w, 0, None, 5, layout="vocab")
    assert [list(s.shape) for s in shards] == [[14, w.shape[1]]] * 5  # ceil(64 / 5) = 13 rows + the zero row
    assert all(s[-1].abs().sum() == 0 for s in shards) and shards[4][12:].abs().sum() == 0  # 52..63, then padding
    assert torch.equal(unshard(shards, 0, None, layout="vocab", size=64), w)
    bias = torch.arange(6.0)
    parts = shard(bias, None, None, 3, layout="partial")
    assert torch.equal(parts[0], bias) and all(p.abs().sum() == 0 for p in parts[1:])
    assert torch.equal(sum(parts), bias)  # what the all_reduce computes
