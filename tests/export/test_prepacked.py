"""Decode on oneDNN-packed weights: what the artifact records, what the graphs bind, what the runtime binds.

Packing is the torch-aot backend's choice for target cpu (backends/cpu_kernels.py), so these artifacts
are compiled with AOTInductor: one bucket and no sub-batch graph keep that to ~20 s per artifact. The
packed artifact is exported through the CLI without --target: it also shows that export's default target
is one this machine's runtime runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from click.testing import CliRunner
from export_testlib import COMMON_CONFIG, SEQUENCE_LENGTH, export_tiny, greedy_reference, open_runtime, prompt_ids
from safetensors import safe_open
from support.tiny import save_tiny_checkpoint

from neuron_cache import Artifact, NeuronConfig
from neuron_cache.signature import SIGNATURE_KEY, GraphSignature
from neuron_export.errors import ExportError
from neuron_infer.runtime import derive_constants, load_runtime

CONFIG = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              tie_word_embeddings=True)
LINEARS_PER_LAYER = 4  # qkv, o, gate_up, down
AOT_SHAPES = dict(batch_size=2, sequence_length=SEQUENCE_LENGTH, max_context_length=32, context_buckets=[32],
                  decode_batches=[])
PROMPT, STEPS = prompt_ids(11, COMMON_CONFIG["vocab_size"], seed=5), 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    directory = tmp_path_factory.mktemp("prepack") / "ckpt"
    return directory, save_tiny_checkpoint(transformers.LlamaConfig(**{**COMMON_CONFIG, **CONFIG}), directory)


@pytest.fixture(scope="module")
def packed(checkpoint, tmp_path_factory) -> Path:
    """`neuron-export` with its defaults (backend torch-aot, no --target): float32, packed decode."""
    from neuron_export.cli import main

    out = tmp_path_factory.mktemp("packed") / "art"
    args = ["-m", str(checkpoint[0]), "--batch_size", "2", "--sequence_length", str(SEQUENCE_LENGTH),
            "--context_buckets", "32", "--decode_batches", "none", "--disable-neuron-cache", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


def aot_signature(graph_file: Path) -> GraphSignature:
    meta = torch._C._aoti.AOTIModelPackageLoader.load_metadata_from_package(str(graph_file), "model")
    return GraphSignature.from_json(meta[SIGNATURE_KEY], str(graph_file))


def packed_constants(graph_file: Path) -> set[str]:
    return {n for n in aot_signature(graph_file).constants if n.endswith("packed_weight")}


def greedy_tokens(runtime) -> list[int]:
    tokens = [int(runtime.prefill(torch.tensor(PROMPT), slot=0).argmax())]
    for step in range(STEPS):
        logits = runtime.decode(torch.tensor([tokens[-1], 0]), torch.tensor([len(PROMPT) + step, 0]))
        tokens.append(int(logits[0].argmax()))
    return tokens


@pytest.mark.skipif(torch.cuda.is_available(), reason="the default target is cuda where a GPU is present")
def test_default_target_is_this_machines_cpu_and_runs_here(checkpoint, packed):
    config = NeuronConfig.load(packed)
    assert (config.target.backend, config.target.device) == ("torch-aot", "cpu")
    runtime = load_runtime(Artifact.open(packed))
    expected, _ = greedy_reference(checkpoint[1], PROMPT, steps=STEPS)
    tokens = [int(runtime.prefill(torch.tensor(PROMPT), slot=1).argmax())]
    for step in range(STEPS):
        logits = runtime.decode(torch.tensor([0, tokens[-1]]), torch.tensor([0, len(PROMPT) + step]))
        assert logits.device.type == "cpu"
        tokens.append(int(logits[1].argmax()))
    assert tokens == expected


def test_packed_decode_contract(packed):
    config = NeuronConfig.load(packed)
    layers = COMMON_CONFIG["num_hidden_layers"]
    derived = config.weights.derived
    assert len(derived) == LINEARS_PER_LAYER * layers + 1  # + lm_head
    assert {d.op for d in derived.values()} == {"onednn_packed_linear"}
    assert {d.args["batch_size"] for d in derived.values()} == {config.batch_size}
    # The tied lm_head packs the embedding it aliases; every source is a stored (or aliased) tensor.
    with safe_open(str(packed / config.weights.files[0].path), "pt") as f:
        stored = set(f.keys())
    assert not any(name.endswith("packed_weight") for name in stored), "packed layouts are never stored"
    assert all(d.source in stored or d.source in config.weights.aliases for d in derived.values())

    # The decode graph binds exactly the derived constants; prefill keeps the stock GEMM on the stored weights.
    assert packed_constants(packed / config.graphs["token_generation"].file) == set(derived)
    assert packed_constants(packed / config.graphs["context_encoding_32"].file) == set()


def test_no_prepack_weights_gives_the_same_tokens_without_packing(checkpoint, packed, tmp_path):
    directory, hf_model = checkpoint
    plain = export_tiny(directory, tmp_path / "plain", backend="torch-aot", prepack_weights=False, **AOT_SHAPES)
    config = NeuronConfig.load(plain)
    assert config.weights.derived == {}
    assert packed_constants(plain / config.graphs["token_generation"].file) == set()
    expected, _ = greedy_reference(hf_model, PROMPT, steps=STEPS)
    for root in (packed, plain):
        assert greedy_tokens(open_runtime(root)) == expected, root.name


def ops_in(graph_file: Path) -> list:
    ep = torch.export.load(str(graph_file))
    return [n.target for n in ep.graph.nodes if n.op == "call_function"]


def test_torch_export_backend_applies_no_kernels(checkpoint, tmp_path):
    directory, _ = checkpoint
    root = export_tiny(directory, tmp_path / "art")  # torch-export, float32: packing would be on with torch-aot
    config = NeuronConfig.load(root)
    assert config.weights.derived == {}
    for graph in config.graphs.values():
        assert torch.ops.mkldnn._linear_pointwise.default not in ops_in(root / graph.file)
    with pytest.raises(ExportError, match="--prepack-weights: backend torch-export"):
        export_tiny(directory, tmp_path / "asked", prepack_weights=True)


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
