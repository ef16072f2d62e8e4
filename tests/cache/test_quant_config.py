"""`neuron_config.json` `quantization`: a typed record that round-trips, validates across fields and keys graphs."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from config_factory import valid_config_dict

from neuron_cache import NeuronConfig, NeuronConfigError, Quantization
from neuron_cache.schema import SCHEMA_FILE
from neuron_cache.signature import GraphSignature, SignatureError, static_value

INT4 = {"method": "int4-weight-only", "bits": 4, "group_size": 32, "scale_dtype": "bfloat16",
        "modules": ["layers.0.attn.qkv_proj", "lm_head"], "source": "gguf:Q4_1", "requantized": ["lm_head"]}


def quantized_dict(**changes: Any) -> dict[str, Any]:
    data = valid_config_dict()
    data["tensor_parallel_size"] = 1
    data["weights"]["files"] = [{k: v for k, v in f.items() if k != "rank"} for f in data["weights"]["files"]]
    data["quantization"] = {**INT4, **changes}
    return data


def test_quantization_round_trips_and_matches_the_schema() -> None:
    data = quantized_dict()
    config = NeuronConfig.from_dict(data)
    assert isinstance(config.quantization, Quantization)
    assert config.quantization.group_size == 32 and config.quantization.source == "gguf:Q4_1"
    assert config.to_dict()["quantization"] == INT4
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    assert [e.message for e in validator.iter_errors(config.to_dict())] == []


@pytest.mark.parametrize(("changes", "top", "field", "message"), [
    ({"bits": 8}, {}, "quantization.bits", "contradicts method 'int4-weight-only'"),
    ({"group_size": 48}, {}, "quantization.group_size", "Allowed: 32, 64, 128, 256. Fix: re-export with "
     "--quant-group-size 32"),
    ({"method": "int8-weight-only", "bits": 8}, {}, "quantization.group_size", "must be null for int8-weight-only"),
    ({"modules": []}, {}, "quantization.modules", "is empty"),
    ({"requantized": ["layers.9.mlp.down_proj"]}, {}, "quantization.requantized", "not quantized"),
    ({"source": "safetensors"}, {}, "quantization.source", "'export' or 'gguf:<GGML type>'"),
    ({}, {"torch_dtype": "float32"}, "torch_dtype", "must be bfloat16 with quantization int4-weight-only"),
])
def test_inconsistent_quantization_is_refused_by_name(changes: dict, top: dict, field: str, message: str) -> None:
    data = quantized_dict(**changes) | top
    with pytest.raises(NeuronConfigError) as err:
        NeuronConfig.from_dict(data)
    assert err.value.field == field
    assert message in str(err.value)


def test_tensor_parallel_quantized_artifacts_are_refused() -> None:
    data = valid_config_dict()  # tensor_parallel_size 2, a weights file per rank
    data["quantization"] = INT4
    with pytest.raises(NeuronConfigError, match=r"tensor_parallel_size.*must be 1 for a quantized artifact"):
        NeuronConfig.from_dict(data)


def test_a_graph_compiled_unquantized_is_not_described_by_a_quantized_config() -> None:
    """The graph's own record of its quantization (static) must equal the config's graph fields."""
    config = NeuronConfig.from_dict(quantized_dict())
    name = "token_generation"
    entry = config.graphs[name]
    static = {"batch_size": config.batch_size, "sequence_length": config.sequence_length,
              "torch_dtype": config.torch_dtype, "rows": None, "bucket": None}
    make = lambda q: GraphSignature(graph=name, static={**static, "quantization": q},  # noqa: E731
                                    inputs=entry.inputs, outputs=entry.outputs, constants={})
    make(static_value(config, "quantization")).check_config(config, name, "tg")
    # The source is not part of what the graph depends on.
    other = NeuronConfig.from_dict(quantized_dict(source="export", requantized=[]))
    make(static_value(config, "quantization")).check_config(other, name, "tg")
    with pytest.raises(SignatureError, match="compiled for quantization=None"):
        make(None).check_config(config, name, "tg")
    with pytest.raises(SignatureError, match="quantization"):
        make({**static_value(config, "quantization"), "group_size": 64}).check_config(config, name, "tg")
