"""Fine-tune -> consolidate -> export -> generate, each step through its real entry point.

A tiny random llama (biases, tied embeddings, SmolLM2's tokenizer and chat template) is written as
an HF checkpoint directory, fine-tuned at tp=2 on the shipped chat data by the shipped example
(`examples/finetune_smollm2.py --model-dir ...` under torchrun, 2 gloo processes), merged by the
`neuron-train consolidate` CLI, compiled by neuron-export with the default torch-aot backend (one
context bucket, batch 1) and run by `NeuronModelForCausalLM`. The judge is always transformers on the
consolidated checkpoint: its greedy tokens, and its loss on the chat data, which must be lower than
the untrained model's (so training happened and survived consolidation).

Both variants share one compile cache (graphs are keyed by architecture and shapes, not weights), so
the LoRA export, run after the full one, reuses its graphs: a graph that had baked in the weights
would generate the full fine-tune's tokens there, not the merged LoRA model's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import tiny_config
from train_testlib import chat_loss, run_checked

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "packages/neuron-train/examples/finetune_smollm2.py"
PROMPT = "<|im_start|>user\nWhat is the capital of Peru?<|im_end|>\n<|im_start|>assistant\n"
NEW_TOKENS = 16
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VARIANTS = {  # example flags per variant; learning rates high enough for a few steps to move a random model
    "full": ["--max-steps", "8", "--lr", "5e-3"],
    "lora": ["--max-steps", "8", "--lr", "2e-2", "--lora"],
}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, smollm2_tokenizer_dir: Path) -> Path:
    """The untrained checkpoint: tiny llama (hidden 64, 2 layers, 4/2 heads) over SmolLM2's vocabulary.

    Weights get noise of std 0.2: with less (tiny.py's 0.05), greedy decoding of this model, and of a
    weakly initialised one after fine-tuning, repeats a single token, which would hide position and
    KV-cache errors in the generate comparison.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    torch.manual_seed(11)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=len(tok))).float()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    out = tmp_path_factory.mktemp("e2e") / "base"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("compile_cache")


def _finetune(base: Path, out: Path, flags: list[str]) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    run_checked([str(torchrun), "--standalone", "--nproc_per_node=2", str(EXAMPLE), "--model-dir", str(base),
          "--output-dir", str(out), "--tp", "2", "--batch-size", "4", "--max-seq-length", "64", *flags],
         "finetune_smollm2.py under torchrun", timeout=300)


def _consolidate(src: Path, dst: Path, *extra: str) -> Path:
    run_checked([str(Path(sys.executable).with_name("neuron-train")), "consolidate", str(src), str(dst), *extra],
         "neuron-train consolidate", timeout=120)
    return dst


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_finetune_consolidate_export_generate(variant: str, base_dir: Path, compile_cache: Path,
                                              tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from neuron_export.export import ExportOptions, export
    from neuron_infer import NeuronModelForCausalLM

    _finetune(base_dir, tmp_path / "run", VARIANTS[variant])
    extra = ["--merge-lora"] if variant == "lora" else []
    hf_dir = _consolidate(tmp_path / "run", tmp_path / "hf", *extra)  # the run dir: its latest checkpoint
    assert not (hf_dir / "adapter").exists()

    # Training changed the weights: every tensor for full fine-tuning, exactly the LoRA targets otherwise.
    before, after = load_file(str(base_dir / "model.safetensors")), load_file(str(hf_dir / "model.safetensors"))
    assert set(after) == set(before)
    changed = {k for k in before if (after[k] - before[k]).abs().max().item() > 1e-4}
    if variant == "full":
        assert changed == set(before), f"unchanged by full fine-tuning: {sorted(set(before) - changed)}"
    else:
        assert changed == {k for k in before if k.endswith(".weight") and k.split(".")[-2] in LORA_TARGETS}

    tok = AutoTokenizer.from_pretrained(hf_dir)
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    base_model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    tuned_loss, base_loss = chat_loss(hf_model, tok, n=32, max_length=64), chat_loss(base_model, tok, n=32, max_length=64)
    assert tuned_loss < base_loss - 1.0, f"chat loss {tuned_loss:.3f} after fine-tuning vs {base_loss:.3f} before"

    artifact = tmp_path / "artifact"
    result = export(ExportOptions(model=str(hf_dir), output=str(artifact), batch_size=1, sequence_length=64,
                                  max_context_length=32, context_buckets=[32], chunk_buckets=[], backend="torch-aot",
                                  cache_url=str(compile_cache)))
    assert result.validation_max_diff is not None and result.validation_max_diff < 1e-3

    ids = tok(PROMPT, return_tensors="pt").input_ids
    assert ids.shape[1] <= 32, "the prompt must fit the single context bucket"
    model = NeuronModelForCausalLM.from_pretrained(artifact)
    assert model.neuron_config.target.backend == "torch-aot"
    ours = model.generate(ids, max_new_tokens=NEW_TOKENS, eos_token_id=None)
    with torch.no_grad():
        ref = hf_model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                eos_token_id=None, pad_token_id=0)
    new_tokens = ref[0, ids.shape[1]:].tolist()
    assert len(new_tokens) == NEW_TOKENS, new_tokens
    assert len(set(new_tokens)) >= NEW_TOKENS // 2, f"degenerate reference, a weak comparison: {new_tokens}"
    assert ours[0].tolist() == ref[0].tolist(), (tok.decode(ours[0]), tok.decode(ref[0]))
