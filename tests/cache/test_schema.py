"""The published JSON Schema of `neuron_config.json`: up to date, and it agrees with the reader."""

from __future__ import annotations

import difflib
import json
from typing import Any

import jsonschema
import pytest
from config_factory import QKV, valid_config_dict

from neuron_cache import NeuronConfig, NeuronConfigError
from neuron_cache.schema import SCHEMA_FILE, generate, render

REGENERATE = "python -m neuron_cache.schema"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture
def config_dict() -> dict[str, Any]:
    """A fresh valid `neuron_config.json` dict (config_factory.py); tests may mutate it."""
    return valid_config_dict()


def test_checked_in_schema_is_up_to_date() -> None:
    checked_in, expected = SCHEMA_FILE.read_text(), render()
    diff = "".join(
        difflib.unified_diff(
            checked_in.splitlines(keepends=True), expected.splitlines(keepends=True), "checked in", "generated", n=1
        )
    )
    assert checked_in == expected, (
        f"{SCHEMA_FILE.name} is stale: the dataclasses in neuron_cache/config.py changed. "
        f"Run `{REGENERATE}` and commit the result.\n{diff}"
    )
    assert json.loads(checked_in) == generate()


def test_schema_declares_draft_2020_12_and_closes_every_object(validator: jsonschema.Draft202012Validator) -> None:
    schema = validator.schema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    objects = [schema, *schema["$defs"].values()]
    assert {name for name in schema["$defs"]} >= {"GraphEntry", "ShardSpec", "WeightsSpec", "FileEntry", "Target"}
    assert all(o["additionalProperties"] is False for o in objects)


def test_valid_config_validates(validator: jsonschema.Draft202012Validator, config_dict: dict[str, Any]) -> None:
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(config_dict)]
    assert errors == []


def test_written_config_validates(validator: jsonschema.Draft202012Validator, config_dict: dict[str, Any]) -> None:
    """What `NeuronConfig.to_dict` writes (defaults filled in) is valid too, even from a minimal input."""
    for optional in ("checkpoint_id", "continuous_batching", "metadata", "quantization", "max_topk"):
        del config_dict[optional]
    del config_dict["graphs"]["token_generation"]["mutated_state"]
    written = NeuronConfig.from_dict(config_dict).to_dict()
    assert written["metadata"] == {}
    assert [e.message for e in validator.iter_errors(written)] == []


MALFORMED = [
    pytest.param(("batch_size",), "4", "'4' is not of type 'integer'", id="wrong-type"),
    pytest.param(("batch_size",), True, "True is not of type 'integer'", id="bool-for-int"),
    pytest.param(("weights",), [], "[] is not of type 'object'", id="list-for-object"),
    pytest.param(("max_batch_size",), 0, "0 is less than the minimum of 1", id="below-minimum"),
    pytest.param(("tp_degre",), 2, "Additional properties are not allowed ('tp_degre' was unexpected)", id="unknown-field"),
    pytest.param(("graphs", "token_generation", "bucket_size"), 1, "('bucket_size' was unexpected)", id="unknown-nested"),
    pytest.param(("task",), "summarization", "'summarization' is not one of ['text-generation'", id="bad-enum"),
    pytest.param(("quantization",), {"method": "int8", "bits": 8, "modules": ["lm_head"]},
                 "'int8' is not one of ['int8-weight-only', 'int4-weight-only']", id="quantization"),
    pytest.param(("graphs", "token_generation", "sha256"), "a" * 65, "does not match", id="sha-too-long"),
    pytest.param(("graphs", "token_generation", "sha256"), "x" + "a" * 64, "does not match", id="sha-prefixed"),
    pytest.param(("graphs", "token_generation", "file"), "/abs/tg.pt2", "does not match", id="absolute-path"),
    pytest.param(("weights", "files", 0, "path"), "weights/../../x", "does not match", id="parent-path"),
    pytest.param(("weights", "sharding", QKV, "segments"), [2048, 0, 512], "0 is less than the minimum of 1",
                 id="segment-zero"),
]


@pytest.mark.parametrize(("keys", "value", "message"), MALFORMED)
def test_malformed_config_is_rejected_by_the_schema_and_the_reader(
    validator: jsonschema.Draft202012Validator, config_dict: dict[str, Any], keys: tuple[Any, ...], value: Any,
    message: str,
) -> None:
    target = config_dict
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    errors = list(validator.iter_errors(config_dict))
    assert len(errors) == 1, [e.message for e in errors]
    reasons = [errors[0].message] + [sub.message for sub in errors[0].context]  # context: the anyOf branches
    assert any(message in reason for reason in reasons), reasons
    assert list(errors[0].absolute_path)[: len(keys) - 1] == list(keys[:-1])
    with pytest.raises(NeuronConfigError):
        NeuronConfig.from_dict(config_dict)


@pytest.mark.parametrize("field", ["model_type", "graphs", "weights", "schema_version"])
def test_missing_required_field_is_rejected(
    validator: jsonschema.Draft202012Validator, config_dict: dict[str, Any], field: str
) -> None:
    del config_dict[field]
    assert [e.message for e in validator.iter_errors(config_dict)] == [f"'{field}' is a required property"]


def test_relative_paths_accepted_by_the_reader_are_accepted_by_the_schema(
    validator: jsonschema.Draft202012Validator, config_dict: dict[str, Any]
) -> None:
    config_dict["graphs"]["token_generation"]["file"] = "graphs/nested/v1.2/token_generation.pt2"
    NeuronConfig.from_dict(config_dict)
    assert [e.message for e in validator.iter_errors(config_dict)] == []
