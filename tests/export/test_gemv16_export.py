"""bfloat16 decode graphs on neuron::linear_16bit (backends/gemv16.py, neuron_infer/kernels): what export traces,
what the artifact records, that the compiled graphs match transformers, and what the runtime refuses.

The artifact is compiled with torch-aot (AOTInductor calls the custom op through its proxy executor): one bucket
and no sub-batch graph keep it to two graphs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import transformers
from export_testlib import COMMON_CONFIG, SEQUENCE_LENGTH, export_tiny, open_runtime, prompt_ids
from support.tiny import save_tiny_checkpoint

from neuron_cache import NeuronConfig
from neuron_export.backends import KernelChoice, cpu_kernels, gemv16, get_backend
from neuron_export.errors import ExportError
from neuron_infer import kernels
from neuron_infer.kernels import gemv

CONFIG = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
              tie_word_embeddings=False)
LINEARS = 4 * COMMON_CONFIG["num_hidden_layers"] + 1  # qkv, o, gate_up, down per layer; lm_head
PROMPT_LEN, DECODE_STEPS = 20, 6
OP = "neuron::linear_16bit"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    directory = tmp_path_factory.mktemp("gemv16") / "ckpt"
    return directory, save_tiny_checkpoint(transformers.LlamaConfig(**{**COMMON_CONFIG, **CONFIG}), directory)


@pytest.fixture(scope="module")
def artifact(checkpoint, tmp_path_factory) -> Path:
    return export_tiny(checkpoint[0], tmp_path_factory.mktemp("gemv16") / "art", torch_dtype="bfloat16",
                       backend="torch-aot", gemv16=True, context_buckets=[32], decode_batches=[], chunk_buckets=[])


def traced_ops(directory: Path, kernels_: KernelChoice, role: str) -> list[object]:
    """The call_function targets of the graph torch-aot traces for `role` with `kernels_` applied."""
    from neuron_export.models.build import build_decoder
    from neuron_export.models.spec import StaticShapes

    shapes = StaticShapes(batch_size=2, sequence_length=SEQUENCE_LENGTH, context_buckets=[32], dtype="bfloat16")
    _, model = build_decoder(transformers.AutoConfig.from_pretrained(directory), shapes)
    model.role = role
    inputs = model.example_inputs(role, 32 if role == "context_encoding" else None)
    with cpu_kernels.applied(model, kernels_, role, batch_size=2), torch.no_grad():
        ep = torch.export.export(model, inputs, strict=False)
    assert all("forward" not in vars(m) for m in model.modules()), "applied must restore every forward"
    return [n.target for n in ep.graph.nodes if n.op == "call_function"]


def test_decode_graphs_call_the_kernel_and_prefill_graphs_do_not(checkpoint):
    choice = KernelChoice(gemv16=True)
    decode = traced_ops(checkpoint[0], choice, "token_generation")
    prefill = traced_ops(checkpoint[0], choice, "context_encoding")
    op = torch.ops.neuron.linear_16bit.default
    assert decode.count(op) == LINEARS and torch.ops.aten.linear.default not in decode
    assert op not in prefill


def test_choice_rules():
    aot = get_backend("torch-aot")
    best = gemv16.best_path("bfloat16")
    default = aot.choose_kernels("cpu", "bfloat16", prepack_weights=None, prefill_upcast=None)
    assert default.gemv16 == gemv16.pays_off("bfloat16", best)
    assert not (default.gemv16 and default.prepacked_decode), "one kernel per decode GEMV"
    forced = aot.choose_kernels("cpu", "bfloat16", prepack_weights=None, prefill_upcast=None, gemv16=True)
    assert forced.gemv16 and not forced.prepacked_decode
    assert not aot.choose_kernels("cpu", "bfloat16", prepack_weights=None, prefill_upcast=None, gemv16=False).gemv16
    assert not aot.choose_kernels("cpu", "float32", prepack_weights=None, prefill_upcast=None).gemv16
    with pytest.raises(ExportError, match="--gemv16 multiplies bfloat16 or float16 weights, not float32"):
        aot.choose_kernels("cpu", "float32", prepack_weights=None, prefill_upcast=None, gemv16=True)
    with pytest.raises(ExportError, match=r"--prepack-weights and --gemv16 .* pass one"):
        aot.choose_kernels("cpu", "bfloat16", prepack_weights=True, prefill_upcast=None, gemv16=True)
    with pytest.raises(ExportError, match=r"--gemv16: backend torch-export \(target cpu\) compiles no CPU kernels"):
        get_backend("torch-export").choose_kernels("cpu", "bfloat16", prepack_weights=None, prefill_upcast=None,
                                                   gemv16=True)


def test_artifact_records_the_kernel(artifact):
    config = NeuronConfig.load(artifact)
    best = kernels.host_paths(torch.bfloat16)[0]
    assert config.metadata["kernels"] == {OP: {"dtype": "bfloat16", "path": best,
                                                "cpu_features": list(gemv.PATH_FEATURES[best])}}
    assert not config.weights.derived, "the kernel reads the weights as stored"
    for name, graph in config.graphs.items():
        with zipfile.ZipFile(artifact / graph.file) as package:
            calls = any(b"linear_16bit" in package.read(f) for f in package.namelist() if f.endswith(".json"))
        assert calls == (graph.role == "token_generation"), name


def test_bf16_on_the_kernel_matches_transformers(checkpoint, artifact):
    # As test_low_precision.py: bf16 rounding is the only error either side should have.
    directory, hf32 = checkpoint
    hf16 = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16,
                                                             attn_implementation="eager").eval()
    art = open_runtime(artifact)

    def logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0, -1].float()

    prompt = prompt_ids(PROMPT_LEN, COMMON_CONFIG["vocab_size"], seed=7)
    ref32, ref16 = logits(hf32, prompt), logits(hf16, prompt)
    scale = ref32.abs().max().item()
    ours = art.prefill(torch.tensor(prompt), slot=1).float()
    assert (ours - ref32).abs().max().item() <= 2 * (ref16 - ref32).abs().max().item() + 0.02 * scale
    assert (ours - ref16).abs().max().item() <= 0.05 * scale
    seq = [*prompt, int(ref32.argmax())]
    for step in range(DECODE_STEPS):  # teacher-forced on transformers' float32 continuation
        pos = len(seq) - 1
        got = art.decode(torch.tensor([0, seq[-1]]), torch.tensor([0, pos]))[1].float()
        r32, r16 = logits(hf32, seq), logits(hf16, seq)
        hf_step, our_step = (r16 - r32).abs().max().item(), (got - r32).abs().max().item()
        assert our_step <= 2 * hf_step + 0.02 * scale, f"decode step {step}: ours {our_step:.3g} vs {hf_step:.3g}"
        seq.append(int(r32.argmax()))


def test_a_fresh_process_loads_the_kernel_before_the_graphs(artifact):
    # Nothing imports neuron_infer.kernels here but the runtime, reading metadata.kernels.
    code = ("import sys, torch; from neuron_cache import Artifact; from neuron_infer.runtime import load_runtime\n"
            "rt = load_runtime(Artifact.open(sys.argv[1]))\n"
            "out = rt.decode(torch.tensor([3, 4]), torch.tensor([0, 0]))\n"
            "print('ok', tuple(out.shape), bool(torch.isfinite(out.float()).all()))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code, str(artifact)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[0] == "ok" and done.stdout.strip().endswith("True"), done.stdout


def test_runtime_refuses_a_cpu_without_the_recorded_path(artifact, monkeypatch):
    recorded = NeuronConfig.load(artifact).metadata["kernels"][OP]["path"]
    if recorded == "scalar":
        pytest.skip("exported on a CPU with no vector path: every CPU runs it")
    monkeypatch.setattr(gemv, "host_paths", lambda dtype: ["scalar"])
    missing = gemv.PATH_FEATURES[recorded][-1]
    with pytest.raises(kernels.KernelUnavailable, match=f"{OP} on its '{recorded}' path, which needs CPU features "
                                                        f".*{missing}.* --no-gemv16"):
        open_runtime(artifact)


def test_runtime_refuses_when_the_kernel_cannot_be_built(artifact, monkeypatch):
    def no_compiler(source, op):
        raise kernels.KernelUnavailable(f"{op} is built from C++ at first use, but no C++ compiler ('c++') is on PATH")

    monkeypatch.setattr(gemv, "load_library", no_compiler)
    with pytest.raises(kernels.KernelUnavailable, match=f"decodes with {OP}, which cannot be built here: .*no C\\+\\+ "
                                                        "compiler"):
        open_runtime(artifact)


def test_runtime_refuses_kernels_it_does_not_know(tmp_path):
    with pytest.raises(kernels.KernelUnavailable, match="names op 'neuron::int4_gemv', which this neuron-infer does "
                                                        "not provide"):
        kernels.require_all({"neuron::int4_gemv": {"path": "avx2"}}, "art")
    with pytest.raises(kernels.KernelUnavailable, match="names no known path/dtype"):
        kernels.require_all({OP: {"path": "avx9", "dtype": "bfloat16"}}, "art")
    json.dumps(gemv.PATH_FEATURES)  # the record is plain JSON
