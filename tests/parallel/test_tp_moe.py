"""Mixture-of-experts artifacts over 2 ranks against transformers' eager model (fp32): experts split by their hidden
dimension (tensor parallelism), and in two groups of whole experts (expert_parallel_size 2, one rank a group).

Three prompts in every bucket decode together, then two and one (the sub-batch graphs), through
`NeuronModelForCausalLM.generate` with its rank processes.
"""

from __future__ import annotations

import pytest
from support.moe import CONFIGS, PROMPTS, generate, save_moe_checkpoint
from support.tiny import transformers_greedy
from tp_testlib import export_tp

from neuron_cache import NeuronConfig
from neuron_export.errors import ShapeError
from neuron_infer import NeuronModelForCausalLM

NEW = 12


@pytest.fixture(scope="module", params=[("qwen3_moe-6x3", 1), ("mixtral-8x2", 2), ("qwen3_moe-8x2", 2)],
                ids=lambda p: f"{p[0]}-ep{p[1]}")
def case(request, tmp_path_factory):
    name, ep = request.param
    root = tmp_path_factory.mktemp(name)
    reference = save_moe_checkpoint(CONFIGS[name](), root / "ckpt", seed=5)
    art = export_tp(root / "ckpt", root / "art", tp=2, expert_parallel_size=ep, kv_buckets=[], chunk_buckets=[])
    model = NeuronModelForCausalLM.from_pretrained(art)
    yield request.param, model, reference, art
    model.runtime.close()


def test_tp2_moe_greedy_equals_transformers(case):
    (name, ep), model, reference, art = case
    config = NeuronConfig.load(art)
    assert (config.tensor_parallel_size, config.expert_parallel_size) == (2, ep)
    experts = config.weights.sharding["layers.1.moe.experts.gate_up_proj"]
    assert (experts.partition_dim, experts.expert_dim) == (1, 0)
    want = [transformers_greedy(reference, p, NEW) for p in PROMPTS]
    assert generate(model, PROMPTS, NEW) == want, name
    assert generate(model, PROMPTS[1:], NEW) == want[1:], name
    assert generate(model, PROMPTS[2:], NEW) == want[2:], name


def test_expert_parallel_size_errors(tmp_path, tp_checkpoints):
    """Refused before anything is traced, naming the option, the value and the fix."""
    path = tmp_path / "ckpt"
    save_moe_checkpoint(CONFIGS["qwen3_moe-6x3"](), path)
    with pytest.raises(ShapeError, match=r"expert_parallel_size=4 does not divide num_experts=6.*choose an "):
        export_tp(path, tmp_path / "a", tp=4, expert_parallel_size=4)
    with pytest.raises(ShapeError, match=r"expert_parallel_size=2 must divide tensor_parallel_size=1"):
        export_tp(path, tmp_path / "b", tp=1, expert_parallel_size=2)
    with pytest.raises(ShapeError, match=r"expert_parallel_size=2: model type llama has no routed experts; use "):
        export_tp(tp_checkpoints["llama"][0], tmp_path / "c", tp=2, expert_parallel_size=2)
