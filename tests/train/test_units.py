"""Single-process checks: argument validation, chat labels, batch order, sharding plans, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import tiny_config
from train_testlib import DATA

from neuron_train.models.plan import ParamPlan, ShardContext, shard, unshard
from neuron_train.parallel.dims import ParallelDims
from neuron_train.training.args import NeuronTrainingArguments
from neuron_train.training.data import BatchOrder, Collator, load_chat_jsonl, tokenize_chat


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("tensor_parallel_size", 0, "tensor_parallel_size=0"),
        ("gradient_accumulation_steps", -1, "gradient_accumulation_steps=-1"),
        ("lr_scheduler_type", "polynomial", "lr_scheduler_type='polynomial'"),
        ("save_steps", -5, "save_steps=-5"),
    ],
)
def test_arguments_name_the_bad_field(field: str, value, needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        NeuronTrainingArguments(output_dir="x", **{field: value})


def test_tp_must_divide_world_size() -> None:
    with pytest.raises(ValueError, match="tensor_parallel_size=2"):
        ParallelDims.build(tp=2)  # a plain process is a world of 1


def test_heads_must_split_over_tp() -> None:
    with pytest.raises(ValueError, match="num_attention_heads=9"):
        ShardContext(tp=2, num_heads=9, num_kv_heads=3, head_dim=64)


def test_shipped_dataset_is_well_formed() -> None:
    conversations = load_chat_jsonl(DATA)
    assert 50 <= len(conversations) <= 200
    assert all(m["role"] in {"system", "user", "assistant"} and m["content"] for c in conversations for m in c)


def test_completion_only_labels_cover_exactly_the_replies(smollm2_tokenizer_dir) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    messages = [
        {"role": "user", "content": "Pick a number."},
        {"role": "assistant", "content": "Seven."},
        {"role": "user", "content": "Double it."},
        {"role": "assistant", "content": "Fourteen."},
    ]
    ex = tokenize_chat(messages, tok, max_length=512)
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert tok.decode(ex["input_ids"]) == rendered
    kept = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100]
    assert all(lab in (-100, t) for t, lab in zip(ex["input_ids"], ex["labels"]))
    # Each reply, with its end-of-turn marker, is trained on; prompts, system text and user turns are not.
    assert tok.decode(kept) == "Seven.<|im_end|>\nFourteen.<|im_end|>\n"
    short = tokenize_chat(messages, tok, max_length=10)
    assert len(short["input_ids"]) == len(short["labels"]) == 10


def test_collator_right_pads_to_multiple() -> None:
    batch = Collator(pad_token_id=0, pad_to_multiple_of=4)([
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
        {"input_ids": [8, 9, 10, 11, 12], "labels": [8, 9, 10, 11, 12]},
    ])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][0].tolist() == [5, 6, 7, 0, 0, 0, 0, 0]
    assert batch["labels"][0].tolist() == [-100, 6, 7, -100, -100, -100, -100, -100]
    assert batch["attention_mask"].sum().item() == 8


def test_batch_order_shards_dp_and_resumes() -> None:
    one = BatchOrder(20, batch_size=4, dp=1, dp_rank=0, seed=3)
    ranks = [BatchOrder(20, batch_size=2, dp=2, dp_rank=r, seed=3) for r in range(2)]
    for _ in range(12):  # crosses two epoch boundaries (5 batches per epoch)
        assert next(one) == next(ranks[0]) + next(ranks[1])
    state = one.state_dict()
    expected = [next(one) for _ in range(4)]
    fresh = BatchOrder(20, batch_size=4, dp=1, dp_rank=0, seed=3)
    fresh.load_state_dict(state)
    assert [next(fresh) for _ in range(4)] == expected


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_fused_qkv_plan_round_trips_with_kv_replication(tp: int) -> None:
    ctx = ShardContext(tp=tp, num_heads=8, num_kv_heads=2, head_dim=3)
    plan = ParamPlan(dim=0, sources=("q", "k", "v"), kinds=("q_heads", "kv_heads", "kv_heads"))
    q, k, v = torch.randn(24, 5), torch.randn(6, 5), torch.randn(6, 5)
    pieces = [shard([q, k, v], plan, ctx, r) for r in range(tp)]
    for r, piece in enumerate(pieces):
        # Rank r's query heads use kv head (r * kv // tp): its piece must carry exactly that one.
        kv_head = (r * 8 // tp) // 4
        if tp > 2:
            assert torch.equal(piece[24 // tp :][:3], k[kv_head * 3 : kv_head * 3 + 3])
    back = unshard(pieces, plan, ctx, [24, 6, 6])
    assert all(torch.equal(a, b) for a, b in zip(back, (q, k, v)))


def test_training_model_rejects_foreign_checkpoint() -> None:
    from neuron_train.models import model_class

    cfg = tiny_config("llama")
    model = model_class(cfg)(cfg, ParallelDims.local())
    with pytest.raises(KeyError, match="checkpoint lacks"):
        model.load_hf_state_dict({"model.embed_tokens.weight": torch.zeros(256, 64)})


def test_cli_imports_no_torch_and_reports_bad_checkpoint(tmp_path: Path) -> None:
    code = "import sys, neuron_train.cli; assert 'torch' not in sys.modules, 'cli imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    from click.testing import CliRunner

    from neuron_train.cli import main

    result = CliRunner().invoke(main, ["consolidate", str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code != 0 and "neuron_train.json" in result.output
