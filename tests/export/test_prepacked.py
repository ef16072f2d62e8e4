"""Decode on oneDNN-packed weights: what the artifact records, what the graphs call, what the runtime binds.

Numerics of the packed path against transformers are covered by test_architectures.py (every
architecture exports with the default, packed, float32 decode); here: the contract and the switch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from export_testlib import COMMON_CONFIG, export_tiny, greedy_reference, open_runtime, prompt_ids
from safetensors import safe_open
from support.tiny import save_tiny_checkpoint

from neuron_cache import NeuronConfig
from neuron_infer.runtime import derive_constants

CONFIG = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              tie_word_embeddings=True)
LINEARS_PER_LAYER = 4  # qkv, o, gate_up, down


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    directory = tmp_path_factory.mktemp("prepack") / "ckpt"
    return directory, save_tiny_checkpoint(transformers.LlamaConfig(**{**COMMON_CONFIG, **CONFIG}), directory)


def ops_in(graph_file: Path) -> list:
    ep = torch.export.load(str(graph_file))
    return [n.target for n in ep.graph.nodes if n.op == "call_function"]


def test_packed_decode_contract(checkpoint, tmp_path):
    directory, _ = checkpoint
    root = export_tiny(directory, tmp_path / "art")
    config = NeuronConfig.load(root)
    layers = COMMON_CONFIG["num_hidden_layers"]
    derived = config.weights.derived
    assert len(derived) == LINEARS_PER_LAYER * layers + 1  # + lm_head
    assert {d.op for d in derived.values()} == {"onednn_packed_linear"}
    assert {d.args["batch_size"] for d in derived.values()} == {config.batch_size}
    # The tied lm_head packs the embedding it aliases; every source is a stored (or aliased) tensor.
    with safe_open(str(root / config.weights.files[0].path), "pt") as f:
        stored = set(f.keys())
    assert not any(name.endswith("packed_weight") for name in stored), "packed layouts are never stored"
    assert all(d.source in stored or d.source in config.weights.aliases for d in derived.values())

    linear_pointwise = torch.ops.mkldnn._linear_pointwise.default
    assert ops_in(root / config.graphs["token_generation"].file).count(linear_pointwise) == len(derived)
    for name, graph in config.graphs.items():
        if graph.role == "context_encoding":
            assert linear_pointwise not in ops_in(root / graph.file), f"{name}: prefill keeps the stock GEMM"


def test_no_prepack_weights_gives_the_same_tokens_without_packing(checkpoint, tmp_path):
    directory, hf_model = checkpoint
    plain = export_tiny(directory, tmp_path / "plain", prepack_weights=False)
    config = NeuronConfig.load(plain)
    assert config.weights.derived == {}
    assert torch.ops.mkldnn._linear_pointwise.default not in ops_in(plain / config.graphs["token_generation"].file)
    packed = open_runtime(export_tiny(directory, tmp_path / "packed"))
    unpacked = open_runtime(plain)
    prompt = prompt_ids(11, COMMON_CONFIG["vocab_size"], seed=5)
    expected, _ = greedy_reference(hf_model, prompt, steps=6)
    for runtime in (packed, unpacked):
        tokens = [int(runtime.prefill(torch.tensor(prompt), slot=0).argmax())]
        for step in range(6):
            logits = runtime.decode(torch.tensor([tokens[-1], 0]), torch.tensor([len(prompt) + step, 0]))
            tokens.append(int(logits[0].argmax()))
        assert tokens == expected


def test_bf16_is_not_prepacked(checkpoint, tmp_path):
    directory, _ = checkpoint
    root = export_tiny(directory, tmp_path / "bf16", torch_dtype="bfloat16")
    assert NeuronConfig.load(root).weights.derived == {}


def test_runtime_derives_both_packed_layouts():
    # onednn_packed_linear (this neuron-export) and mkl_packed_linear (artifacts of neuron-export 0.1.0).
    from neuron_cache.config import DerivedTensor

    w = torch.randn(48, 32)
    x = torch.randn(4, 32)

    class Spec:  # only weights.derived is read
        class weights:
            derived = {"a.packed": DerivedTensor(op="onednn_packed_linear", source="a", args={"batch_size": 4}),
                       "b.packed": DerivedTensor(op="mkl_packed_linear", source="a", args={"batch_size": 4})}

    constants = {"a": w}
    derive_constants(Spec, constants)
    onednn = torch.ops.mkldnn._linear_pointwise(x, constants["a.packed"], None, "none", [None], "")
    mkl = torch.ops.mkl._mkl_linear(x, constants["b.packed"], w, None, 4)
    torch.testing.assert_close(onednn, x @ w.T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mkl, x @ w.T, rtol=1e-5, atol=1e-5)

    Spec.weights.derived = {"c": DerivedTensor(op="future_layout", source="a", args={})}
    with pytest.raises(RuntimeError, match=r"weights\.derived\.c: unknown op 'future_layout'; upgrade neuron-infer"):
        derive_constants(Spec, {"a": w})
