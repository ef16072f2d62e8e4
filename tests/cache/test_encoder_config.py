"""The contract for encoder artifacts: tasks, (rows, bucket) graphs, batch_buckets and pooling."""

from __future__ import annotations

from typing import Any

import pytest
from config_factory import fake_sha256, valid_config_dict

from neuron_cache import NeuronConfig, NeuronConfigError

ROWS, BUCKETS = [1, 8], [64, 128]


def _graph(rows: int, bucket: int) -> dict[str, Any]:
    file = f"graphs/encoder_b{rows}_s{bucket}.pt2"
    ids = {"shape": [rows, bucket], "dtype": "int64"}
    return {"file": file, "sha256": fake_sha256(file), "role": "encoder", "bucket": bucket, "rows": rows,
            "inputs": [{"name": "input_ids", **ids}, {"name": "attention_mask", **ids}],
            "outputs": [{"name": "last_hidden_state", "shape": [rows, bucket, 384], "dtype": "float32"},
                        {"name": "sentence_embedding", "shape": [rows, 384], "dtype": "float32"}]}


def encoder_dict() -> dict[str, Any]:
    data = valid_config_dict()
    data.update(task="feature-extraction", model_type="bert", architecture="BertModel", batch_size=8,
                max_batch_size=8, continuous_batching=False, sequence_length=128, max_context_length=128,
                context_buckets=list(BUCKETS), batch_buckets=list(ROWS), tensor_parallel_size=1,
                torch_dtype="float32", state=[], pooling={"mode": "mean", "normalize": True},
                graphs={f"encoder_b{r}_s{b}": _graph(r, b) for r in ROWS for b in BUCKETS})
    data["weights"] = {"files": data["weights"]["files"][:1]}
    return data


def test_an_encoder_config_round_trips_and_names_its_graphs():
    config = NeuronConfig.from_dict(encoder_dict())
    assert config.is_encoder and config.pooling.mode == "mean" and config.pooling.normalize
    assert NeuronConfig.from_dict(config.to_dict()) == config
    assert config.encoder_graph(1, 10) == "encoder_b1_s64"
    assert config.encoder_graph(3, 65) == "encoder_b8_s128"
    with pytest.raises(ValueError, match="9 rows exceed batch_size=8"):
        config.encoder_graph(9, 10)
    with pytest.raises(ValueError, match="exceeds max_context_length=128"):
        config.encoder_graph(1, 129)


def test_without_batch_buckets_the_batch_size_is_the_only_one():
    data = encoder_dict()
    del data["batch_buckets"]
    data["graphs"] = {f"encoder_b8_s{b}": _graph(8, b) for b in BUCKETS}
    config = NeuronConfig.from_dict(data)
    assert config.encoder_batch_buckets == [8] and "batch_buckets" not in config.to_dict()


def _broken(change) -> str:
    data = encoder_dict()
    change(data)
    with pytest.raises(NeuronConfigError) as caught:
        NeuronConfig.from_dict(data)
    return str(caught.value)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["graphs"].pop("encoder_b8_s64"), "lacks encoder graphs for (rows, bucket) [(8, 64)]"),
    (lambda d: d["graphs"]["encoder_b1_s64"].update(rows=4), "is not a (batch, sequence) bucket pair"),
    (lambda d: d["graphs"]["encoder_b1_s64"].update(bucket=32), "is not a (batch, sequence) bucket pair"),
    (lambda d: d["graphs"]["encoder_b1_s64"].update(role="context_encoding", rows=None),
     "are not encoder graphs, but task is 'feature-extraction'"),
    (lambda d: d.update(batch_buckets=[8, 1]), "must be strictly increasing and end at batch_size (8)"),
    (lambda d: d.update(batch_buckets=[1, 4], graphs={f"encoder_b{r}_s{b}": _graph(r, b) for r in (1, 4)
                                                       for b in BUCKETS}), "end at batch_size (8)"),
    (lambda d: d.update(sequence_length=256), "must equal max_context_length (128) for an encoder"),
    (lambda d: d.update(state=[{"name": "k", "shape": [1], "dtype": "float32"}]), "has no meaning for task"),
    (lambda d: d.update(task="fill-mask"), "pooling"),
    (lambda d: d.update(pooling={"mode": "median"}), "median"),
])
def test_a_wrong_encoder_config_is_refused_naming_the_field(change, message):
    assert message in _broken(change)


def test_a_decoder_config_may_not_hold_encoder_graphs():
    data = valid_config_dict()
    data["graphs"]["encoder_b1_s128"] = _graph(1, 128)
    with pytest.raises(NeuronConfigError, match=r"are encoder graphs, but task is 'text-generation'"):
        NeuronConfig.from_dict(data)
