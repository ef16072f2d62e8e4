"""bfloat16 graphs against transformers' bfloat16 eager model, with and without float32 prefill GEMMs.

On CPUs without native 16-bit dot products (AVX2-only hosts), the torch-aot backend compiles prefill
graphs that upcast each weight and multiply in float32 (backends/cpu_kernels.py). Both variants are
compiled with torch-aot (the kernel is its choice) and checked the same way:
- our bf16 logits are as close to transformers' *float32* logits as transformers' own bf16 model is
  (bf16 rounding is the only error either should have), and close to transformers' bf16 logits;
- decode steps, teacher-forced on transformers' continuation, likewise;
- the upcast variant's prefill graph really multiplies in float32 and its decode graph does not (traced
  here with the backend's kernels applied, as the backend traces it: an AOTInductor package holds C++).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from export_testlib import COMMON_CONFIG, SEQUENCE_LENGTH, export_tiny, open_runtime, prompt_ids
from support.tiny import save_tiny_checkpoint

from neuron_cache import NeuronConfig
from neuron_export.backends import KernelChoice, cpu_kernels

CONFIG = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
              tie_word_embeddings=False)
PROMPT_LEN = 20  # runs the 32 bucket: 32 rows, above UPCAST_MIN_ROWS
DECODE_STEPS = 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    config = transformers.LlamaConfig(**{**COMMON_CONFIG, **CONFIG})
    directory = tmp_path_factory.mktemp("bf16") / "ckpt"
    return directory, save_tiny_checkpoint(config, directory)


def hf_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def linear_input_dtypes(directory: Path, upcast: bool, role: str) -> list[torch.dtype]:
    """dtype of the activation fed to each linear/mm of the graph torch-aot traces for `role` (bucket 32)."""
    from neuron_export.models.build import build_decoder
    from neuron_export.models.spec import StaticShapes

    hf_config = transformers.AutoConfig.from_pretrained(directory)
    shapes = StaticShapes(batch_size=2, sequence_length=SEQUENCE_LENGTH, context_buckets=[32], dtype="bfloat16")
    _, model = build_decoder(hf_config, shapes)
    model.role = role
    inputs = model.example_inputs(role, None if role == "token_generation" else 32)
    with cpu_kernels.applied(model, KernelChoice(prefill_upcast=upcast), role, batch_size=2), torch.no_grad():
        ep = torch.export.export(model, inputs, strict=False)
    ops = {torch.ops.aten.linear.default, torch.ops.aten.mm.default, torch.ops.aten.addmm.default}
    dtypes = []
    for node in ep.graph.nodes:
        if node.op == "call_function" and node.target in ops:
            arg = node.args[1] if node.target is torch.ops.aten.addmm.default else node.args[0]
            dtypes.append(arg.meta["val"].dtype)
    return dtypes


@pytest.mark.parametrize("upcast", [True, False], ids=["prefill-upcast", "native-bf16"])
def test_bf16_matches_transformers(checkpoint, tmp_path, upcast):
    directory, hf32 = checkpoint
    hf16 = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16,
                                                             attn_implementation="eager").eval()
    root = export_tiny(directory, tmp_path / "art", torch_dtype="bfloat16", prefill_upcast=upcast, backend="torch-aot",
                       context_buckets=[32], decode_batches=[])
    config = NeuronConfig.load(root)
    assert config.metadata["prefill_matmul_dtype"] == ("float32" if upcast else "bfloat16")
    art = open_runtime(root)

    prompt = prompt_ids(PROMPT_LEN, COMMON_CONFIG["vocab_size"], seed=3)
    ref32 = hf_logits(hf32, prompt)
    ref16 = hf_logits(hf16, prompt)
    scale = ref32.abs().max().item()
    ours = art.prefill(torch.tensor(prompt), slot=1).float()
    hf_err = (ref16[-1] - ref32[-1]).abs().max().item()
    our_err = (ours - ref32[-1]).abs().max().item()
    # Both carry only bf16 rounding: ours may differ in summation order, not in precision.
    assert our_err <= 2 * hf_err + 0.02 * scale, f"prefill: ours {our_err:.3g} vs transformers bf16 {hf_err:.3g}"
    assert (ours - ref16[-1]).abs().max().item() <= 0.05 * scale
    # The chunked-prefill graph (chunk 32, the default here): every prompt position, same bounds.
    chunk = art.prefill_chunk(torch.tensor(prompt), 0, 0)
    hf_rows, our_rows = (ref16 - ref32).abs().max().item(), (chunk - ref32).abs().max().item()
    assert our_rows <= 2 * hf_rows + 0.02 * scale, f"chunked prefill: ours {our_rows:.3g} vs transformers {hf_rows:.3g}"

    seq = [*prompt, int(ref32[-1].argmax())]
    for step in range(DECODE_STEPS):
        pos = len(seq) - 1
        logits = art.decode(torch.tensor([0, seq[-1]]), torch.tensor([0, pos]))[1].float()
        r32, r16 = hf_logits(hf32, seq)[-1], hf_logits(hf16, seq)[-1]
        hf_step = (r16 - r32).abs().max().item()
        ours_step = (logits - r32).abs().max().item()
        assert ours_step <= 2 * hf_step + 0.02 * scale, f"decode step {step}: ours {ours_step:.3g} vs {hf_step:.3g}"
        seq.append(int(r32.argmax()))

    prefill_dtypes = linear_input_dtypes(directory, upcast, "context_encoding")
    decode_dtypes = linear_input_dtypes(directory, upcast, "token_generation")
    chunk_dtypes = linear_input_dtypes(directory, upcast, "chunked_prefill")
    layer_gemms = 4 * COMMON_CONFIG["num_hidden_layers"]  # qkv, o, gate_up, down
    assert len(prefill_dtypes) == layer_gemms + 1  # + lm_head on the last token
    if upcast:
        assert prefill_dtypes[:layer_gemms] == [torch.float32] * layer_gemms
        assert prefill_dtypes[-1] == torch.bfloat16, "a 1-row lm_head GEMV is cheaper without the upcast"
        assert chunk_dtypes[:layer_gemms] == [torch.float32] * layer_gemms  # a chunk's GEMMs are prefill's
    else:
        assert set(prefill_dtypes) == {torch.bfloat16} and set(chunk_dtypes) == {torch.bfloat16}
    assert set(decode_dtypes) == {torch.bfloat16}, "decode is bandwidth-bound: it must read 16-bit weights"


def test_prefill_matmul_dtype_says_what_the_graphs_multiply_in(checkpoint, tmp_path):
    # Which backend upcasts where (torch-aot on a CPU without native bf16 GEMMs, by default) is
    # test_cpu_kernels.py's; torch-export never does, and the artifact says so.
    directory, _ = checkpoint
    root = export_tiny(directory, tmp_path / "art", torch_dtype="bfloat16", context_buckets=[32])
    assert NeuronConfig.load(root).metadata["prefill_matmul_dtype"] == "bfloat16"
    root32 = export_tiny(directory, tmp_path / "art32", torch_dtype="float32", context_buckets=[32])
    assert NeuronConfig.load(root32).metadata["prefill_matmul_dtype"] == "float32"


def _export_validated(directory: Path, out: Path, logs: list[str], **options):
    from neuron_export.export import ExportOptions, export

    opts = dict(model=str(directory), output=str(out), batch_size=2, sequence_length=48, max_context_length=32,
                context_buckets=[32], backend="torch-export", torch_dtype="bfloat16", disable_neuron_cache=True)
    return export(ExportOptions(**{**opts, **options}), log=logs.append)


def test_bf16_validation_asks_float32_when_the_gap_exceeds_atol(checkpoint, tmp_path):
    # atol 0 forces the second opinion: ours and transformers' bf16 model, each against float32.
    import re

    from neuron_export.errors import ValidationFailedError

    directory, _ = checkpoint
    logs: list[str] = []
    try:
        _export_validated(directory, tmp_path / "art", logs, atol=0.0)
        passed = True
    except ValidationFailedError:
        passed = False
    line = next(m for m in logs if "against transformers in float32" in m)
    ours, hf = map(float, re.findall(r"ours ([0-9.e-]+), transformers bfloat16 ([0-9.e-]+)", line)[0])
    assert passed == (ours <= hf), line
    assert ours > 0 and hf > 0


def test_bf16_validation_still_catches_a_wrong_export(checkpoint, tmp_path, monkeypatch):
    from neuron_export.errors import ValidationFailedError
    from neuron_export.models import decoder

    monkeypatch.setattr(decoder.RMSNorm, "forward", lambda self, x: self.weight * x)  # no normalisation
    directory, _ = checkpoint
    logs: list[str] = []
    with pytest.raises(ValidationFailedError, match="differ from transformers"):
        _export_validated(directory, tmp_path / "art", logs)
    assert any("against transformers in float32" in m for m in logs)
