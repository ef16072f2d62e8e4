"""`neuron_config.json` read/write: round trips, the `tp_degree` alias, and every way a config can be wrong.

Policy on unknown fields (config.py's docstring): they are rejected, at any depth, with the list of
allowed fields, so that a typo never silently becomes a default. Free-form data goes under `metadata`.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from config_factory import QKV, valid_config_dict

import neuron_cache
from neuron_cache import CONFIG_NAME, NeuronConfig, NeuronConfigError, SchemaVersionError

Mutation = Callable[[dict[str, Any]], None]
ROOT_FIELDS = (
    "schema_version, producer, task, model_type, architecture, checkpoint_id, checkpoint_revision, batch_size, "
    "max_batch_size, continuous_batching, sequence_length, max_context_length, context_buckets, chunk_buckets, "
    "batch_buckets, pooling, tensor_parallel_size, expert_parallel_size, torch_dtype, on_device_sampling, max_topk, speculation_length, quantization, target, "
    "graphs, weights, state, metadata"
)
GRAPH_FIELDS = "file, sha256, role, bucket, rows, inputs, outputs, mutated_state"
PATH_RULE = (r"strings matching (?!/)(?![\s\S]*\.\.)[^\\\x00-\x1f\x7f]+ (relative path inside the artifact: "
             "no leading '/', no '..', no backslash or control characters)")
SHA_RULE = "strings matching [0-9a-f]{64} (lowercase hex sha256 digest of the file)"


@pytest.fixture
def config_dict() -> dict[str, Any]:
    """A fresh valid `neuron_config.json` dict (config_factory.py); tests may mutate it."""
    return valid_config_dict()


def put(keys: tuple[str | int, ...], value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = keys
        for key in parents:
            data = data[key]
        data[last] = value

    return mutate


def drop(keys: tuple[str | int, ...]) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = keys
        for key in parents:
            data = data[key]
        del data[last]

    return mutate


def case(case_id: str, mutation: Mutation, field: str, message: str) -> Any:
    return pytest.param(mutation, field, message, id=case_id)


CE128, TG = ("graphs", "context_encoding_128"), ("graphs", "token_generation")

MALFORMED = [
    # ---- wrong JSON types ----------------------------------------------------------------------
    case("int-as-string", put(("batch_size",), "1"), "batch_size",
         "field 'batch_size' = '1': has the wrong type. Allowed: an integer."),
    case("bool-as-int", put(("batch_size",), True), "batch_size",
         "field 'batch_size' = True: has the wrong type. Allowed: an integer."),
    case("float-as-int", put(("sequence_length",), 1024.0), "sequence_length",
         "field 'sequence_length' = 1024.0: has the wrong type. Allowed: an integer."),
    case("string-as-bool", put(("continuous_batching",), "yes"), "continuous_batching",
         "field 'continuous_batching' = 'yes': has the wrong type. Allowed: boolean."),
    case("string-as-list", put(("context_buckets",), "128,512"), "context_buckets",
         "field 'context_buckets' = '128,512': has the wrong type. Allowed: a list of integer."),
    case("list-as-object", put(("weights",), ["weights/model.safetensors"]), "weights",
         "field 'weights' = ['weights/model.safetensors']: has the wrong type. Allowed: an object (WeightsSpec)."),
    case("string-as-object", put(("producer",), "neuron-export 0.1.0"), "producer",
         "field 'producer' = 'neuron-export 0.1.0': has the wrong type. Allowed: an object (Producer)."),
    case("list-as-map", put(("graphs",), [GRAPH_FIELDS]), "graphs",
         "has the wrong type. Allowed: an object whose values are an object (GraphEntry)."),
    case("int-as-optional-string", put(("checkpoint_id",), 42), "checkpoint_id",
         "field 'checkpoint_id' = 42: has the wrong type. Allowed: string."),
    case("string-as-shape", put((*TG, "inputs", 0, "shape"), "4x1"), "graphs.token_generation.inputs[0].shape",
         "field 'graphs.token_generation.inputs[0].shape' = '4x1': has the wrong type. Allowed: a list of integer."),
    case("alias-not-a-string", put(("weights", "aliases", "lm_head.weight"), ["model.embed_tokens.weight"]),
         "weights.aliases.lm_head.weight",
         "field 'weights.aliases.lm_head.weight' = ['model.embed_tokens.weight']: has the wrong type. Allowed: string."),
    # ---- out of range ------------------------------------------------------------------------
    case("batch-size-zero", put(("batch_size",), 0), "batch_size",
         "field 'batch_size' = 0: must be >= 1. Allowed: values >= 1."),
    case("tp-zero", put(("tensor_parallel_size",), 0), "tensor_parallel_size",
         "field 'tensor_parallel_size' = 0: must be >= 1. Allowed: values >= 1."),
    case("speculation-negative", put(("speculation_length",), -1), "speculation_length",
         "field 'speculation_length' = -1: must be >= 0. Allowed: values >= 0."),
    case("schema-version-zero", put(("schema_version",), 0), "schema_version",
         "field 'schema_version' = 0: must be >= 1. Allowed: values >= 1."),
    case("bucket-zero", put(("context_buckets",), [0, 512]), "context_buckets[0]",
         "field 'context_buckets[0]' = 0: must be >= 1. Allowed: values >= 1."),
    case("dynamic-shape", put((*CE128, "inputs", 0, "shape"), [-1, 128]), "graphs.context_encoding_128.inputs[0].shape[0]",
         "field 'graphs.context_encoding_128.inputs[0].shape[0]' = -1: must be >= 0. Allowed: values >= 0."),
    case("state-dynamic-shape", put(("state", 1, "shape"), [16, 4, 8, -1, 64]), "state[1].shape[3]",
         "field 'state[1].shape[3]' = -1: must be >= 0. Allowed: values >= 0."),
    case("segment-zero", put(("weights", "sharding", QKV, "segments"), [2048, 0, 512]),
         f"weights.sharding.{QKV}.segments[1]",
         f"field 'weights.sharding.{QKV}.segments[1]' = 0: must be >= 1. Allowed: values >= 1."),
    case("speculation-too-long", put(("speculation_length",), 1024), "speculation_length",
         "field 'speculation_length' = 1024: must be below sequence_length (1024). Allowed: 0..1023."),
    # ---- contradictory shapes ----------------------------------------------------------------
    case("bucket-above-max-context", put(("context_buckets",), [128, 1024]), "context_buckets",
         "field 'context_buckets' = [128, 1024]: has bucket 1024 above max_context_length (512). "
         "Allowed: buckets <= 512."),
    case("batch-above-max-batch", put(("batch_size",), 8), "batch_size",
         "field 'batch_size' = 8: exceeds max_batch_size (4). Allowed: 1..4."),
    case("max-context-above-sequence", put(("max_context_length",), 2048), "max_context_length",
         "field 'max_context_length' = 2048: exceeds sequence_length (1024). Allowed: 1..1024."),
    case("unsorted-buckets", put(("context_buckets",), [512, 128]), "context_buckets",
         "field 'context_buckets' = [512, 128]: must be strictly increasing. Allowed: a strictly increasing list "
         "of integers. Fix: use [128, 512]."),
    case("duplicate-buckets", put(("context_buckets",), [128, 128, 512]), "context_buckets",
         "field 'context_buckets' = [128, 128, 512]: must be strictly increasing."),
    case("buckets-end-below-max-context", put(("context_buckets",), [128, 256]), "context_buckets",
         "field 'context_buckets' = [128, 256]: must end at max_context_length (512) so that every allowed prompt "
         "fits a bucket. Allowed: a list whose last bucket is 512. Fix: append 512."),
    case("no-buckets", put(("context_buckets",), []), "context_buckets",
         "field 'context_buckets' = []: is empty. Allowed: a non-empty increasing list."),
    case("chunk-above-max-context", put(("chunk_buckets",), [128, 600]), "chunk_buckets",
         "field 'chunk_buckets' = [128, 600]: holds a chunk length outside 1..max_context_length (512). Allowed: chunk "
         "lengths 1..512. Fix: drop [600] or raise max_context_length."),
    case("unsorted-chunks", put(("chunk_buckets",), [256, 128]), "chunk_buckets",
         "field 'chunk_buckets' = [256, 128]: must be strictly increasing. Allowed: a strictly increasing list of "
         "integers (or empty). Fix: use [128, 256]."),
    case("chunk-without-graph", put(("chunk_buckets",), [128]), "chunk_buckets",
         "field 'chunk_buckets' = [128]: names chunk length(s) [128] that no chunked_prefill graph has. Allowed: "
         "chunk lengths with a graph: []. Fix: re-export the model, or drop them."),
    case("chunk-graph-not-listed", put((*CE128, "role"), "chunked_prefill"), "graphs.context_encoding_128.bucket",
         "field 'graphs.context_encoding_128.bucket' = 128: is not one of chunk_buckets. Allowed: none (chunk_buckets "
         "is empty). Fix: re-export the model."),
    case("context-graph-bucket-not-listed", put((*CE128, "bucket"), 256), "graphs.context_encoding_128.bucket",
         "field 'graphs.context_encoding_128.bucket' = 256: is not one of context_buckets. Allowed: 128, 512."),
    case("context-graph-without-bucket", put((*CE128, "bucket"), None), "graphs.context_encoding_128.bucket",
         "field 'graphs.context_encoding_128.bucket' = None: is not one of context_buckets. Allowed: 128, 512."),
    case("token-graph-bucket-past-the-cache", put((*TG, "bucket"), 1024), "graphs.token_generation.bucket",
         "field 'graphs.token_generation.bucket' = 1024: is not below sequence_length (1024). Allowed: 1..1023, "
         "or null for a graph over the whole KV cache."),
    case("only-kv-bucketed-token-graph", put((*TG, "bucket"), 128), "graphs",
         "has no token_generation graph over the whole batch and KV cache. Allowed: a token_generation graph with "
         "rows and bucket null."),
    case("rows-on-context-graph", put((*CE128, "rows"), 1), "graphs.context_encoding_128.rows",
         "field 'graphs.context_encoding_128.rows' = 1: must be null for role 'context_encoding'. Allowed: null."),
    case("rows-not-below-batch", put((*TG, "rows"), 1), "graphs.token_generation.rows",
         "field 'graphs.token_generation.rows' = 1: is not below batch_size (1). Allowed: null. "
         "Fix: a graph over every slot has rows null."),
    case("ep-not-dividing-tp", put(("expert_parallel_size",), 3), "expert_parallel_size",
         "field 'expert_parallel_size' = 3: must divide tensor_parallel_size (2): the ranks form expert_parallel_size "
         "groups. Allowed: a divisor of 2. Fix: re-export with an --expert_parallel_size that divides "
         "--tensor_parallel_size."),
    case("no-graphs", put(("graphs",), {}), "graphs",
         "field 'graphs' = {}: is empty. Allowed: at least one compiled graph."),
    # ---- unknown and missing fields ----------------------------------------------------------
    case("unknown-field", put(("tp_degre",), 2), "tp_degre",
         f"field 'tp_degre' = 2: is not a field of this schema version (unknown fields are rejected so that a typo "
         f"never silently falls back to a default). Allowed: {ROOT_FIELDS}. Fix: remove or rename the field; "
         "free-form data belongs under 'metadata'."),
    case("unknown-graph-field", put((*TG, "bucket_size"), 1), "graphs.token_generation.bucket_size",
         f"field 'graphs.token_generation.bucket_size' = 1: is not a field of this schema version (unknown fields "
         f"are rejected so that a typo never silently falls back to a default). Allowed: {GRAPH_FIELDS}."),
    case("unknown-shard-field", put(("weights", "sharding", QKV, "split"), "qkv"), f"weights.sharding.{QKV}.split",
         "is not a field of this schema version (unknown fields are rejected so that a typo never silently falls "
         "back to a default). Allowed: partition_dim, segments, granule, replicable, layout, expert_dim."),
    case("unknown-producer-field", put(("producer", "commit"), "abc123"), "producer.commit",
         "field 'producer.commit' = 'abc123': is not a field of this schema version"),
    case("missing-model-type", drop(("model_type",)), "model_type",
         "field 'model_type' = None: is required but missing. Allowed: string. Fix: add 'model_type' to the object."),
    case("missing-nested", drop(("target", "torch_version")), "target.torch_version",
         "field 'target.torch_version' = None: is required but missing. Allowed: string. "
         "Fix: add 'torch_version' to the object."),
    case("missing-schema-version", drop(("schema_version",)), "schema_version",
         "field 'schema_version' = None: is required but missing. Allowed: an integer. "
         'Fix: add "schema_version": 1.'),
    case("missing-graph-sha", drop((*TG, "sha256")), "graphs.token_generation.sha256",
         "field 'graphs.token_generation.sha256' = None: is required but missing. Allowed: string."),
    # ---- digests and paths -------------------------------------------------------------------
    case("sha-uppercase", put((*TG, "sha256"), "AB" * 32), "graphs.token_generation.sha256",
         f"field 'graphs.token_generation.sha256' = '{'AB' * 32}': has the wrong format. Allowed: {SHA_RULE}."),
    case("sha-too-long", put(("weights", "files", 0, "sha256"), "a" * 65), "weights.files[0].sha256",
         f"field 'weights.files[0].sha256' = '{'a' * 65}': has the wrong format. Allowed: {SHA_RULE}."),
    case("graph-absolute-path", put((*TG, "file"), "/opt/artifacts/tg.pt2"), "graphs.token_generation.file",
         f"field 'graphs.token_generation.file' = '/opt/artifacts/tg.pt2': has the wrong format. Allowed: {PATH_RULE}."),
    case("graph-parent-path", put((*TG, "file"), "graphs/../../tg.pt2"), "graphs.token_generation.file",
         f"field 'graphs.token_generation.file' = 'graphs/../../tg.pt2': has the wrong format. Allowed: {PATH_RULE}."),
    # A newline once hid the '..' from a look-ahead that stopped at the line end (issue 10).
    case("graph-newline-escape", put((*TG, "file"), "x\n/../../outside.pt2"), "graphs.token_generation.file",
         f"field 'graphs.token_generation.file' = 'x\\n/../../outside.pt2': has the wrong format. Allowed: {PATH_RULE}."),
    case("graph-backslash", put((*TG, "file"), "graphs\\..\\tg.pt2"), "graphs.token_generation.file",
         "field 'graphs.token_generation.file' = 'graphs\\\\..\\\\tg.pt2': has the wrong format."),
    case("weights-nul", put(("weights", "files", 0, "path"), "weights/a\x00.safetensors"), "weights.files[0].path",
         "field 'weights.files[0].path' = 'weights/a\\x00.safetensors': has the wrong format."),
    case("bucket-without-graph", drop(("graphs", "context_encoding_128")), "context_buckets",
         "field 'context_buckets' = [128, 512]: names bucket(s) [128] that no context_encoding graph has. "
         "Allowed: buckets with a graph: [512]. Fix: re-export the model, or drop those buckets."),
    case("no-full-batch-decode-graph", drop(("graphs", "token_generation")), "graphs",
         "field 'graphs' = ['context_encoding_128', 'context_encoding_512']: has no token_generation graph over "
         "the whole batch and KV cache. Allowed: a token_generation graph with rows and bucket null. Fix: re-export the "
         "model."),
    case("weights-absolute-path", put(("weights", "files", 1, "path"), "/data/model.safetensors"),
         "weights.files[1].path",
         f"field 'weights.files[1].path' = '/data/model.safetensors': has the wrong format. Allowed: {PATH_RULE}."),
    # ---- enums, reserved fields, sharding ----------------------------------------------------
    case("bad-task", put(("task",), "text2text-generation"), "task",
         "field 'task' = 'text2text-generation': not a recognised value. Allowed: 'text-generation', "
         "'feature-extraction', 'sentence-similarity', 'fill-mask', 'text-classification', 'token-classification', "
         "'question-answering'."),
    case("bad-dtype", put(("torch_dtype",), "fp16"), "torch_dtype",
         "field 'torch_dtype' = 'fp16': not a recognised value. Allowed: 'float32', 'bfloat16', 'float16'."),
    case("bad-role", put((*TG, "role"), "decode"), "graphs.token_generation.role",
         "field 'graphs.token_generation.role' = 'decode': not a recognised value. Allowed: 'context_encoding', "
         "'token_generation', 'chunked_prefill', 'speculation', 'encoder'."),
    case("quantization-bad-method", put(("quantization",), {"method": "int8", "bits": 8, "modules": ["lm_head"]}),
         "quantization.method",
         "field 'quantization.method' = 'int8': not a recognised value. Allowed: 'int8-weight-only', "
         "'int4-weight-only'."),
    case("segments-without-partition-dim", put(("weights", "sharding", QKV, "partition_dim"), None),
         f"weights.sharding.{QKV}.segments",
         f"field 'weights.sharding.{QKV}.segments' = [2048, 512, 512]: requires a partition_dim. Allowed: null "
         "when partition_dim is null. Fix: set partition_dim, or drop segments for a replicated parameter."),
    case("partition-dim-negative", put(("weights", "sharding", QKV, "partition_dim"), -1),
         f"weights.sharding.{QKV}.partition_dim",
         f"field 'weights.sharding.{QKV}.partition_dim' = -1: must be >= 0. Allowed: values >= 0."),
    case("tp-degree-contradicts", put(("tp_degree",), 4), "tp_degree",
         "field 'tp_degree' = 4: contradicts tensor_parallel_size (2). Allowed: 2 (the value of "
         "tensor_parallel_size). Fix: keep only tensor_parallel_size."),
]


# ---- the malformed table -----------------------------------------------------------------------
def test_the_table_is_large_and_its_ids_are_unique() -> None:
    ids = [p.id for p in MALFORMED]
    assert len(ids) >= 25
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(("mutation", "field", "message"), MALFORMED)
def test_malformed_config_is_rejected_with_a_precise_error(
    config_dict: dict[str, Any], mutation: Mutation, field: str, message: str
) -> None:
    mutation(config_dict)
    with pytest.raises(NeuronConfigError) as caught:
        NeuronConfig.from_dict(config_dict)
    err = caught.value
    assert message in str(err)
    assert err.field == field
    assert str(err).startswith(f"neuron_config field '{field}' = ")
    assert "Allowed: " in str(err), "every error must say what is allowed"


@pytest.mark.parametrize(("mutation", "field", "message"), MALFORMED)
def test_malformed_config_is_rejected_from_disk_too(
    tmp_path: Path, config_dict: dict[str, Any], mutation: Mutation, field: str, message: str
) -> None:
    mutation(config_dict)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config_dict))
    with pytest.raises(NeuronConfigError, match=rf"^neuron_config field '{re.escape(field)}' = "):
        NeuronConfig.load(tmp_path)


def test_the_unmutated_config_is_valid(config_dict: dict[str, Any]) -> None:
    """The fixture is valid, so every failure in the table is caused by its own mutation."""
    NeuronConfig.from_dict(config_dict)


def test_free_form_data_under_metadata_is_kept(config_dict: dict[str, Any]) -> None:
    config_dict["metadata"] = {"tp_degre": 2, "notes": ["anything", {"nested": True}]}
    config = NeuronConfig.from_dict(config_dict)
    assert config.metadata == {"tp_degre": 2, "notes": ["anything", {"nested": True}]}
    assert config.to_dict()["metadata"] == config_dict["metadata"]


def test_root_must_be_an_object() -> None:
    with pytest.raises(NeuronConfigError, match=r"field '<root>' = \[1, 2\]: must be a JSON object"):
        NeuronConfig.from_dict([1, 2])  # type: ignore[arg-type]


def test_invalid_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_NAME
    path.write_text('{"schema_version": 1,')
    with pytest.raises(NeuronConfigError, match=r"is not valid JSON \(.* at line 1 column 22 of ") as caught:
        NeuronConfig.load(path)
    assert str(path) in str(caught.value), "a long path must not be cut off the message"
    assert "Allowed: a JSON object." in str(caught.value)


# ---- schema versions ---------------------------------------------------------------------------
@pytest.mark.parametrize(("schema_version", "release"), [(2, "0.2.0"), (11, "0.11.0")])
def test_newer_schema_names_the_release_to_upgrade_to_and_the_producer(
    config_dict: dict[str, Any], schema_version: int, release: str
) -> None:
    config_dict["schema_version"] = schema_version
    config_dict["producer"] = {"package": "neuron-export", "version": "0.7.1"}
    config_dict["field_added_later"] = {"anything": 1}  # a newer schema may add fields: version wins
    with pytest.raises(SchemaVersionError) as caught:
        NeuronConfig.from_dict(config_dict)
    text = str(caught.value)
    assert caught.value.field == "schema_version"
    assert f"pip install -U 'neuron-cache>={release}'" in text
    assert "written by neuron-export 0.7.1" in text
    assert f"neuron-cache {neuron_cache.__version__} reads schema_version <= {neuron_cache.SCHEMA_VERSION}" in text
    assert f"field 'schema_version' = {schema_version}: is newer than this reader" in text


def test_newer_schema_without_a_producer_does_not_invent_one(config_dict: dict[str, Any]) -> None:
    config_dict["schema_version"] = 2
    del config_dict["producer"]
    with pytest.raises(SchemaVersionError, match=r"pip install -U 'neuron-cache>=0\.2\.0'") as caught:
        NeuronConfig.from_dict(config_dict)
    assert "None" not in str(caught.value)
    assert "written by" not in str(caught.value)


def test_current_schema_version_is_what_this_reader_writes(config_dict: dict[str, Any]) -> None:
    assert config_dict["schema_version"] == neuron_cache.SCHEMA_VERSION
    assert NeuronConfig.from_dict(config_dict).to_dict()["schema_version"] == neuron_cache.SCHEMA_VERSION


# ---- round trips -------------------------------------------------------------------------------
def test_dict_json_round_trip(config_dict: dict[str, Any]) -> None:
    config = NeuronConfig.from_dict(config_dict)
    again = NeuronConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.to_dict() == config_dict  # every field of the fixture survives, nothing is added
    assert again.graphs["context_encoding_512"].bucket == 512
    assert again.weights.sharding[QKV].segments == [2048, 512, 512]


def test_from_dict_does_not_modify_its_argument(config_dict: dict[str, Any]) -> None:
    config_dict["tp_degree"] = config_dict.pop("tensor_parallel_size")
    before = copy.deepcopy(config_dict)
    NeuronConfig.from_dict(config_dict)
    assert config_dict == before


def test_save_load_round_trip(tmp_path: Path, config_dict: dict[str, Any]) -> None:
    config = NeuronConfig.from_dict(config_dict)
    written = config.save(tmp_path)
    assert written == tmp_path / CONFIG_NAME
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME]  # no temporary file left behind
    assert NeuronConfig.load(written) == config
    assert NeuronConfig.load(tmp_path) == config
    assert json.loads(written.read_text()) == config_dict


def test_save_refuses_an_invalid_config_and_writes_nothing(tmp_path: Path, config_dict: dict[str, Any]) -> None:
    config = NeuronConfig.from_dict(config_dict).replace(batch_size=64)
    with pytest.raises(NeuronConfigError, match=r"field 'batch_size' = 64: exceeds max_batch_size \(4\)"):
        config.save(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_tp_degree_alias_is_read_and_written_back_as_tensor_parallel_size(
    tmp_path: Path, config_dict: dict[str, Any]
) -> None:
    del config_dict["tensor_parallel_size"]
    config_dict["tp_degree"] = 8
    config = NeuronConfig.from_dict(config_dict)
    assert config.tensor_parallel_size == 8
    out = config.to_dict()
    assert out["tensor_parallel_size"] == 8
    assert "tp_degree" not in out
    on_disk = json.loads(config.save(tmp_path).read_text())
    assert on_disk["tensor_parallel_size"] == 8
    assert "tp_degree" not in on_disk


def test_tp_degree_equal_to_tensor_parallel_size_is_accepted(config_dict: dict[str, Any]) -> None:
    config_dict["tp_degree"] = config_dict["tensor_parallel_size"]
    assert NeuronConfig.from_dict(config_dict).to_dict()["tensor_parallel_size"] == 2


def test_tp_degree_and_tensor_parallel_size_differing_is_an_error(config_dict: dict[str, Any]) -> None:
    config_dict["tensor_parallel_size"] = 2
    config_dict["tp_degree"] = 4
    with pytest.raises(NeuronConfigError, match=r"'tp_degree' = 4: contradicts tensor_parallel_size \(2\)"):
        NeuronConfig.from_dict(config_dict)


# ---- runtime helpers ---------------------------------------------------------------------------
@pytest.mark.parametrize(("length", "bucket"), [(1, 128), (128, 128), (129, 512), (512, 512)])
def test_bucket_for_picks_the_smallest_bucket_that_fits(config_dict: dict[str, Any], length: int, bucket: int) -> None:
    assert NeuronConfig.from_dict(config_dict).bucket_for(length) == bucket


def test_bucket_for_a_prompt_longer_than_max_context_length(config_dict: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"Prompt of 513 tokens exceeds max_context_length=512"):
        NeuronConfig.from_dict(config_dict).bucket_for(513)


def with_chunk_graph(config_dict: dict[str, Any], size: int = 128) -> dict[str, Any]:
    graph = {**config_dict["graphs"]["context_encoding_128"], "role": "chunked_prefill", "bucket": size}
    return {**config_dict, "chunk_buckets": [size], "graphs": {**config_dict["graphs"], f"chunked_prefill_{size}": graph}}


def test_chunk_buckets_are_written_only_when_set(config_dict: dict[str, Any]) -> None:
    """An artifact without chunked_prefill graphs reads as chunk_buckets [] and is written back as it was."""
    config = NeuronConfig.from_dict(config_dict)
    assert config.chunk_buckets == [] and config.chunk_plan(700) == []
    assert "chunk_buckets" not in config.to_dict() and config.to_dict() == config_dict
    chunked = NeuronConfig.from_dict(with_chunk_graph(config_dict))
    assert chunked.to_dict()["chunk_buckets"] == [128]
    assert chunked.graph_for("chunked_prefill", bucket=128) == "chunked_prefill_128"


def test_chunk_plan_takes_the_largest_chunk_then_the_smallest_that_holds_the_tail(config_dict: dict[str, Any]) -> None:
    config = NeuronConfig.from_dict(with_chunk_graph(config_dict)).replace(chunk_buckets=[8, 16, 64])
    assert [config.chunk_plan(n) for n in (1, 8, 9, 64, 65, 100, 130)] == [
        [8], [8], [16], [64], [64, 8], [64, 64], [64, 64, 8]]


def test_rows_on_a_chunk_graph_are_refused(config_dict: dict[str, Any]) -> None:
    data = with_chunk_graph(config_dict)
    data["graphs"]["chunked_prefill_128"]["rows"] = 1
    with pytest.raises(NeuronConfigError, match=r"graphs.chunked_prefill_128.rows' = 1: must be null for role "
                                                r"'chunked_prefill'"):
        NeuronConfig.from_dict(data)


def test_graphs_by_role(config_dict: dict[str, Any]) -> None:
    config = NeuronConfig.from_dict(config_dict)
    assert sorted(config.graphs_by_role("context_encoding")) == ["context_encoding_128", "context_encoding_512"]
    assert list(config.graphs_by_role("token_generation")) == ["token_generation"]
    assert valid_config_dict() == config_dict  # the factory hands out fresh, equal dicts
