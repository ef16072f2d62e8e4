"""What a tensor-parallel export writes, and what it refuses."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open
from support.tiny import make_tiny_checkpoint
from tp_testlib import export_tp

from neuron_cache import Artifact
from neuron_export.errors import ShapeError
from neuron_infer.runtime import DecoderRuntime


@pytest.mark.parametrize(("overrides", "tp", "message"), [
    (dict(hidden_size=72, num_attention_heads=9, num_key_value_heads=3, head_dim=8), 2, "num_attention_heads=9 does not split"),
    (dict(hidden_size=72, num_attention_heads=6, num_key_value_heads=3, head_dim=12), 2, "num_key_value_heads=3 and tensor_parallel"),
    (dict(intermediate_size=110), 4, "intermediate_size=110 does not split over tensor_parallel_size=4"),
])
def test_shapes_that_do_not_split_are_refused_before_compiling(tmp_path, overrides, tp, message):
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", **overrides)
    with pytest.raises(ShapeError, match=f"--tensor_parallel_size {tp}: {message}.*divides"):
        export_tp(ckpt, tmp_path / "out", tp=tp)
    assert not (tmp_path / "out").exists()


def test_artifact_records_ranks_plan_and_signature(tp_checkpoints, tmp_path):
    art = export_tp(tp_checkpoints["llama"][0], tmp_path / "tp2", tp=2, batch_size=2, decode_batches=[1])
    raw = json.loads((art / "neuron_config.json").read_text())
    assert raw["tensor_parallel_size"] == 2
    assert [(f["path"], f["rank"]) for f in raw["weights"]["files"]] == [("weights/rank0.safetensors", 0),
                                                                          ("weights/rank1.safetensors", 1)]
    plan = raw["weights"]["sharding"]
    assert plan["embed_tokens.weight"]["layout"] == "vocab" and "layout" not in plan["norm.weight"]
    # vocab 160 over 2 ranks: 80 rows each plus the zero row; 4 heads / 2 kv heads of 16: q 32 + k 16 + v 16 rows
    with safe_open(art / "weights/rank1.safetensors", "pt") as f:
        assert list(f.get_tensor("embed_tokens.weight").shape) == [81, 64]
        assert f.get_tensor("embed_tokens.weight")[80].abs().sum() == 0
        assert f.get_tensor("embed_tokens.local_ids")[:3].tolist() == [80, 80, 80]  # ids 0..79 live on rank 0
        assert f.get_tensor("embed_tokens.local_ids")[80:83].tolist() == [0, 1, 2]
        assert list(f.get_tensor("layers.0.attn.qkv_proj.weight").shape) == [64, 64]
        assert list(f.get_tensor("layers.0.mlp.down_proj.weight").shape) == [64, 56]
    # one graph per role, shared by both ranks, that knows it is one rank of two
    with pytest.raises(RuntimeError, match=r"tensor_parallel_size=2 artifact.*load_runtime"):
        DecoderRuntime(Artifact.open(art))
