"""Quantized artifacts against transformers' eager Llama on the same weights.

(a) Exactness of the kernels: transformers with its linear weights replaced by the artifact's stored tensors,
    dequantized here by the formulas of the contract (neuron_cache.Quantization), independently of
    neuron-export's own dequantizers, must produce the same greedy tokens and logits within LOGIT_ATOL
    (what separates bf16 activations from float32).
(b) Accuracy: against the unquantized model, the quantized artifact stays within a bound per method.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from neuron_cache import Artifact
from neuron_cache.signature import SignatureError
from neuron_infer.runtime import DecoderRuntime, load_runtime

pytestmark = pytest.mark.slow

PROMPT = [5, 17, 42, 99, 7, 63, 120, 11]
NEW_TOKENS = 16
# bf16 activations against a float32 reference on identical weights. This tiny model's logits span about
# +-0.8; measured max |diff| 0.004 (int8) and 0.003 (int4); a wrong int4 zero point (q - 7) moves them by 0.56.
LOGIT_ATOL = 0.02
# Against the unquantized float32 model (teacher-forced on its greedy tokens): (max |logit diff|, minimum
# agreement of the greedy token over NEW_TOKENS steps). Measured: int8 0.009 / 16 of 16, int4 0.085 / 15 of 16.
ACCURACY = {"int8": (0.03, 0.9), "int4": (0.25, 0.75)}


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    """Contract: element 2j in the low nibble of byte j, 2j+1 in the high nibble."""
    out = torch.empty(packed.shape[0], packed.shape[1] * 2, dtype=torch.float32)
    out[:, 0::2] = (packed & 0xF).float()
    out[:, 1::2] = (packed >> 4).float()
    return out


def dequantized_weights(artifact: Path, zero_offset: float = 8.0) -> dict[str, torch.Tensor]:
    """Our linear name -> the float32 weight the artifact's stored tensors encode (the contract's formulas)."""
    config = json.loads((artifact / "neuron_config.json").read_text())
    stored = load_file(artifact / "weights" / "model.safetensors")
    out = {}
    for name in config["quantization"]["modules"]:
        if config["quantization"]["bits"] == 8:
            out[name] = stored[f"{name}.qweight"].float() * stored[f"{name}.scales"].float()[:, None]
            continue
        q = _unpack(stored[f"{name}.qweight"])
        sz = stored[f"{name}.scales_and_zeros"].float()  # (groups, out, 2)
        scale, zero = sz[..., 0].t(), sz[..., 1].t()  # (out, groups)
        n, k = q.shape
        g = q.view(n, scale.shape[1], -1)
        out[name] = ((g - zero_offset) * scale[..., None] + zero[..., None]).view(n, k)
    return out


def hf_with(checkpoint: Path, weights: dict[str, torch.Tensor] | None, artifact: Path | None = None):
    """transformers' float32 Llama of `checkpoint`; with `weights`, its linears (and a separate lm_head) replaced
    and its embedding and norms rounded as the artifact stores them (bf16)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    if weights is None:
        return model
    stored = load_file(artifact / "weights" / "model.safetensors")
    cfg = model.config
    q_rows, kv_rows = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(stored["embed_tokens.weight"].float())
        model.model.norm.weight.copy_(stored["norm.weight"].float())
        for i, layer in enumerate(model.model.layers):
            q, k, v = weights[f"layers.{i}.attn.qkv_proj"].split([q_rows, kv_rows, kv_rows])
            gate, up = weights[f"layers.{i}.mlp.gate_up_proj"].chunk(2)
            for module, w in ((layer.self_attn.q_proj, q), (layer.self_attn.k_proj, k), (layer.self_attn.v_proj, v),
                              (layer.self_attn.o_proj, weights[f"layers.{i}.attn.o_proj"]),
                              (layer.mlp.gate_proj, gate), (layer.mlp.up_proj, up),
                              (layer.mlp.down_proj, weights[f"layers.{i}.mlp.down_proj"])):
                module.weight.copy_(w)
            for norm in ("input_layernorm", "post_attention_layernorm"):
                getattr(layer, norm).weight.copy_(stored[f"layers.{i}.{norm}.weight"].float())
        model.lm_head.weight = torch.nn.Parameter(weights["lm_head"].clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    return model


def reference_run(model, prompt: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy tokens and the logits at every step (n, vocab)."""
    ids, logits = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            step = model(torch.tensor([ids])).logits[0, -1]
            logits.append(step)
            ids.append(int(step.argmax()))
    return ids[len(prompt):], torch.stack(logits)


def artifact_run(runtime, prompt: list[int], forced: list[int]) -> torch.Tensor:
    """The artifact's logits (n, vocab) along `forced` tokens (teacher forcing: one step per token)."""
    logits = [runtime.prefill(torch.tensor(prompt), 0)]
    for i, token in enumerate(forced[:-1]):
        logits.append(runtime.decode(torch.tensor([token]), torch.tensor([len(prompt) + i]))[0])
    return torch.stack(logits).float()


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_equals_transformers_on_the_dequantized_weights(method, quant_artifacts, quant_checkpoint):
    artifact = quant_artifacts[method]
    reference = hf_with(quant_checkpoint, dequantized_weights(artifact), artifact)
    tokens, ref_logits = reference_run(reference, PROMPT, NEW_TOKENS)
    runtime = load_runtime(Artifact.open(artifact))
    ours = artifact_run(runtime, PROMPT, tokens)
    assert ours.argmax(-1).tolist() == tokens  # the artifact's own greedy choice at every step
    diff = (ours - ref_logits).abs().max().item()
    assert diff <= LOGIT_ATOL, diff
    if method == "int4":  # the check is sharp enough to see a wrong zero-point convention (q - 7 instead of q - 8)
        wrong = hf_with(quant_checkpoint, dequantized_weights(artifact, zero_offset=7.0), artifact)
        _, wrong_logits = reference_run(wrong, PROMPT, 1)
        assert (ours[0] - wrong_logits[0]).abs().max().item() > LOGIT_ATOL


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_accuracy_against_the_unquantized_model(method, quant_artifacts, quant_checkpoint):
    max_diff, min_agreement = ACCURACY[method]
    tokens, ref_logits = reference_run(hf_with(quant_checkpoint, None), PROMPT, NEW_TOKENS)
    runtime = load_runtime(Artifact.open(quant_artifacts[method]))
    ours = artifact_run(runtime, PROMPT, tokens)
    agreement = (ours.argmax(-1) == torch.tensor(tokens)).float().mean().item()
    diff = (ours - ref_logits).abs().max().item()
    assert diff <= max_diff and agreement >= min_agreement, (diff, agreement)
    assert diff > 0  # quantized weights: something must differ (a graph running the float weights would not)


def test_int4_is_coarser_than_int8(quant_artifacts, quant_checkpoint):
    tokens, ref_logits = reference_run(hf_with(quant_checkpoint, None), PROMPT, 4)
    errors = {m: (artifact_run(load_runtime(Artifact.open(p)), PROMPT, tokens) - ref_logits).abs().mean().item()
              for m, p in quant_artifacts.items()}
    assert errors["int4"] > errors["int8"], errors


def test_artifact_stores_canonical_tensors_and_derives_the_kernel_layout(quant_artifacts):
    int4 = quant_artifacts["int4"]
    config = json.loads((int4 / "neuron_config.json").read_text())
    q = config["quantization"]
    assert (q["method"], q["bits"], q["group_size"], q["source"]) == ("int4-weight-only", 4, 32, "export")
    assert "lm_head" in q["modules"] and "embed_tokens" not in q["modules"]
    stored = load_file(int4 / "weights" / "model.safetensors")
    assert not any(name.endswith("packed_weight") for name in stored)  # derived, never stored
    assert stored["embed_tokens.weight"].dtype == torch.bfloat16 and "lm_head.qweight" in stored
    assert config["weights"]["aliases"] == {}  # the tied head has its own quantized copy
    derived = config["weights"]["derived"]
    assert set(derived) == {f"{m}.packed_weight" for m in q["modules"]}
    assert {d["op"] for d in derived.values()} == {"int4pack_cpu"}
    assert not config["weights"]["derived"] or all(d["source"].endswith(".qweight") for d in derived.values())
    int8 = json.loads((quant_artifacts["int8"] / "neuron_config.json").read_text())
    assert int8["quantization"]["group_size"] is None and int8["weights"]["derived"] == {}


def test_a_config_that_hides_the_quantization_is_refused(quant_artifacts, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(quant_artifacts["int8"], copy)
    path = copy / "neuron_config.json"
    config = json.loads(path.read_text())
    config["quantization"] = None
    path.write_text(json.dumps(config))
    with pytest.raises(SignatureError, match="compiled for quantization="):
        DecoderRuntime(Artifact.open(copy))


def test_a_weaker_cpu_is_refused_by_name(quant_artifacts, monkeypatch):
    config = json.loads((quant_artifacts["int4"] / "neuron_config.json").read_text())
    assert config["metadata"]["cpu_isa"] == torch.backends.cpu.get_cpu_capability()
    monkeypatch.setattr("neuron_infer.runtime.host_cpu_isa", lambda: "DEFAULT")
    if config["metadata"]["cpu_isa"] == "DEFAULT":
        pytest.skip("exported on a CPU without AVX2: nothing weaker to refuse")
    with pytest.raises(RuntimeError, match=f"compiled on a {config['metadata']['cpu_isa']} CPU"):
        DecoderRuntime(Artifact.open(quant_artifacts["int4"]))


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_chunked_prefill_equals_transformers_on_the_dequantized_weights(method, quant_artifacts, quant_checkpoint):
    """The chunked-prefill graphs (the default chunk sizes) run the same quantized linears: every position of
    the prompt and its continuation, encoded in two calls, the second at an offset."""
    artifact = quant_artifacts[method]
    reference = hf_with(quant_checkpoint, dequantized_weights(artifact), artifact)
    tokens, _ = reference_run(reference, PROMPT, 6)
    seq = PROMPT + tokens
    with torch.no_grad():
        ref = reference(torch.tensor([seq])).logits[0]
    runtime = load_runtime(Artifact.open(artifact))
    assert runtime.config.chunk_buckets
    ours = torch.cat([runtime.prefill_chunk(torch.tensor(seq[:5]), 0, 0),
                      runtime.prefill_chunk(torch.tensor(seq[5:]), 0, 5)])
    diff = (ours - ref).abs().max().item()
    assert diff <= LOGIT_ATOL, diff
