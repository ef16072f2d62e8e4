"""LoRA SFT on the shipped chat data at tp=2: the loss falls, tp=2 tracks tp=1, and the consolidated
adapter is a valid PEFT adapter whose effect equals the merged checkpoint, both judged by
transformers/PEFT rather than by our own model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from train_testlib import chat_loss, torchrun

from neuron_train.cli import main as cli


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, smollm2_tokenizer_dir) -> Path:
    out = tmp_path_factory.mktemp("lora")
    torchrun("lora_sft.py", out, "--tokenizer", str(smollm2_tokenizer_dir), timeout=300)
    return out


def _consolidate(src: Path, dst: Path, *extra: str) -> Path:
    result = CliRunner().invoke(cli, ["consolidate", str(src), str(dst), *extra])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return dst


@pytest.mark.distributed
@pytest.mark.slow
def test_lora_lowers_loss_and_tp2_tracks_tp1(lora_run: Path) -> None:
    curves = json.loads((lora_run / "lora.json").read_text())
    tp2, tp1 = curves["tp2"], curves["tp1"]
    assert len(tp2) == len(tp1) == 16
    assert sum(tp2[-4:]) / 4 < sum(tp2[:4]) / 4 - 0.5, f"LoRA training did not lower the loss: {tp2}"
    torch.testing.assert_close(torch.tensor(tp2), torch.tensor(tp1), atol=1e-4, rtol=1e-5)


@pytest.mark.distributed
@pytest.mark.slow
def test_lora_adapter_loads_in_peft_and_equals_merge(lora_run: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    unmerged = _consolidate(lora_run / "tp2", tmp_path / "unmerged")
    merged = _consolidate(lora_run / "tp2", tmp_path / "merged", "--merge-lora")
    assert (unmerged / "adapter" / "adapter_model.safetensors").exists()
    assert (merged / "tokenizer.json").exists() and not (merged / "adapter").exists()

    # The unmerged base weights are the untouched base model, bit for bit.
    base_sd = load_file(str(lora_run / "base" / "model.safetensors"))
    got = load_file(str(unmerged / "model.safetensors"))
    assert set(got) == set(base_sd) and all(torch.equal(got[k], base_sd[k]) for k in base_sd)

    tok = AutoTokenizer.from_pretrained(merged)
    ids = torch.tensor([tok("<|im_start|>user\nWhat is the capital of Peru?<|im_end|>\n")["input_ids"]])
    base = AutoModelForCausalLM.from_pretrained(unmerged, dtype=torch.float32).eval()
    base_logits = base(input_ids=ids).logits
    base_loss = chat_loss(base, tok, n=40, max_length=96)
    with_adapter = PeftModel.from_pretrained(base, unmerged / "adapter").eval()
    merged_model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    peft_logits = with_adapter(input_ids=ids).logits
    merged_logits = merged_model(input_ids=ids).logits

    assert (peft_logits - base_logits).abs().max() > 1e-2, "the adapter has no effect"
    torch.testing.assert_close(peft_logits, merged_logits, atol=1e-4, rtol=1e-4)
    merged_loss = chat_loss(merged_model, tok, n=40, max_length=96)
    assert merged_loss < base_loss - 0.5, f"merged model loss {merged_loss:.3f} vs base {base_loss:.3f}"
