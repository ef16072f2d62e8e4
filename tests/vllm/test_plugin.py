"""The plugin's decisions, without serving: which platform and worker vLLM gets, and the settings
refused against the artifact's compiled shapes (each message names both values)."""

from __future__ import annotations

import json
import re

import pytest
import torch
import transformers
from vllm_testlib import run_offline, run_worker, vllm_env

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

OK_ARGS = dict(max_num_seqs=2, max_model_len=64, dtype="float32")


def engine_configs(cases: list[dict], tmp_path, **env) -> dict:
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    run_worker("engine_config.py", [str(tmp_path / "cases.json"), str(tmp_path / "out.json")], timeout=180,
               env=vllm_env(**env))
    return json.loads((tmp_path / "out.json").read_text())


def test_artifacts_get_the_neuron_worker_and_bad_settings_name_both_values(tiny_artifact, tiny_checkpoint, tmp_path):
    art = str(tiny_artifact)
    cases = [
        (dict(OK_ARGS), None),
        ({**OK_ARGS, "max_num_seqs": 4}, r"max_num_seqs=4 .*batch_size=2.*max_num_seqs=2"),
        ({"max_model_len": 64, "dtype": "float32"}, r"max_num_seqs=\d+ .*batch_size=2"),  # vLLM's default
        ({**OK_ARGS, "max_model_len": 128}, r"max_model_len=128 .*sequence_length=64"),
        ({**OK_ARGS, "dtype": "bfloat16"}, r"dtype='bfloat16' .*torch_dtype=float32"),
        ({**OK_ARGS, "enable_lora": True}, r"enable_lora=True .*LoRA"),
        ({**OK_ARGS, "tensor_parallel_size": 2}, r"tensor_parallel_size=2 .*tensor_parallel_size=1"),
    ]
    out = engine_configs([{"model": art, "args": args} for args, _ in cases]
                         + [{"model": str(tiny_checkpoint), "args": dict(OK_ARGS)}], tmp_path)
    assert out["platform"] == "NeuronPlatform" and out["register"] == "neuron_vllm.platform.NeuronPlatform"
    results = out["results"]
    # The tiny artifact has chunked-prefill graphs: vLLM's prefix caching stays on; vLLM plans the slots' blocks
    # (batch 2 x 64 positions / 16 per block, plus its null block).
    assert results[0] == {"worker_cls": "neuron_vllm.worker.NeuronWorker", "prefix_caching": True, "block_size": 16,
                          "num_gpu_blocks_override": 2 * 64 // 16 + 1}
    for (args, pattern), result in zip(cases[1:], results[1:len(cases)]):
        assert "error" in result, f"{args} was accepted: {result}"
        assert re.search(pattern, result["error"]), result["error"]
    # A plain checkpoint is vLLM's own CPU path, untouched by the plugin.
    assert results[-1]["worker_cls"] == "vllm.v1.worker.cpu_worker.CPUWorker"


@pytest.mark.parametrize(("plugins", "platform", "register"), [
    ("", "CpuPlatform", None),  # vLLM's own CPU backend: the plugin stays out
    ("neuron", "NeuronPlatform", "neuron_vllm.platform.NeuronPlatform"),
    ("someone_else", "CpuPlatform", None),
])
def test_vllm_plugins_selects_the_platform(tiny_artifact, tmp_path, plugins, platform, register):
    out = engine_configs([], tmp_path, VLLM_PLUGINS=plugins)
    assert (out["platform"], out["register"]) == (platform, register)


def test_a_plain_checkpoint_still_runs_on_vllms_cpu_backend_with_the_plugin_installed(tokenizer, tmp_path):
    # vLLM's CPU attention needs head_dim >= 32; otherwise the same kind of tiny random Llama.
    torch.manual_seed(1)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=112,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                                      max_position_embeddings=128, tie_word_embeddings=False,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.15)
    model.save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    prompts, n = [[1, 17, 33, 5, 90], [1, 120, 3]], 6
    got = run_offline(dict(model=str(tmp_path / "plain"), max_num_seqs=2, max_model_len=64, dtype="float32",
                           prompts=prompts, max_tokens=[n, n]), tmp_path)
    assert got["platform"] == "NeuronPlatform"  # installed and active, yet this model is vLLM's own
    for i, prompt in enumerate(prompts):
        with torch.no_grad():
            want = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        assert got["token_ids"][i] == want, f"prompt {i}"
