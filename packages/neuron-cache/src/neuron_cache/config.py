"""`neuron_config.json`: the contract between the compiler side and the runtime.

An artifact is a directory holding this file, the compiled graphs and the weights. Everything a
runtime needs to run the graphs is here; nothing here needs the model's source code.

Policies, each enforced by `NeuronConfig.from_dict`:

- Unknown fields are rejected (a typo such as ``"tp_degre"`` must not silently become a default).
  Free-form producer data goes under ``metadata``.
- ``tp_degree`` (optimum-neuron's name) is accepted on read as an alias of ``tensor_parallel_size``;
  it is always written as ``tensor_parallel_size``.
- ``schema_version`` N is first read by neuron-cache 0.N.0 (while the major version is 0). A reader
  meeting a newer schema refuses it and names the neuron-cache release to upgrade to.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from neuron_cache.errors import NeuronConfigError, SchemaVersionError
from neuron_cache.typed import dataclass_from_json, from_json, to_json

SCHEMA_VERSION = 1
CONFIG_NAME = "neuron_config.json"

TASKS = ("text-generation", "feature-extraction", "sentence-similarity", "fill-mask", "text-classification",
         "token-classification", "question-answering")
# Tasks run by encoder graphs (role "encoder"): one pass over a padded (rows, sequence) batch, no KV cache.
ENCODER_TASKS = tuple(t for t in TASKS if t != "text-generation")
# sentence-transformers' Pooling modes (pooling_mode_*), plus last_token for decoder embedders (Qwen3-Embedding).
POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len_tokens", "last_token")
DTYPES = ("float32", "bfloat16", "float16")
# The max |logit difference| against transformers an artifact of each dtype is validated at, unless told
# otherwise (`neuron-export --atol`, `neuron-infer validate --atol`).
VALIDATION_ATOL = {"float32": 1e-3, "bfloat16": 0.6, "float16": 0.15}
GRAPH_ROLES = ("context_encoding", "token_generation", "chunked_prefill", "speculation", "encoder")
_SHA256 = "[0-9a-f]{64}"
# No leading '/', no '..' anywhere, no backslash and no control character: a newline once let
# "x\n/../../outside.pt2" past a '..' look-ahead that stopped at the line end. `Artifact.path` also
# resolves every path (symlinks included) and refuses one that leaves the artifact root.
_REL_PATH = r"(?!/)(?![\s\S]*\.\.)[^\\\x00-\x1f\x7f]+"
_SHA256_MEANING = "lowercase hex sha256 digest of the file"
_REL_PATH_MEANING = "relative path inside the artifact: no leading '/', no '..', no backslash or control characters"
MAX_CONFIG_BYTES = 16 << 20  # a decoder's config is a few KiB; refuse to parse a memory bomb
MAX_NESTING = 64  # the schema nests 4 levels; free-form metadata gets generous room, not unbounded recursion


def first_reader_of(schema_version: int) -> str:
    """The neuron-cache release that first reads `schema_version` (see the module docstring)."""
    return f"0.{schema_version}.0"


@dataclass(kw_only=True, slots=True)
class Producer:
    """The package that wrote the artifact."""

    package: str
    version: str


@dataclass(kw_only=True, slots=True)
class Target:
    """What the graphs were compiled for."""

    backend: str = field(metadata={"description": "compile backend name, e.g. 'torch-aot' or 'neuron'"})
    device: str = field(metadata={"description": "device kind: 'cpu', 'cuda', 'trn1', 'trn2', 'inf2'"})
    compiler_version: str = field(metadata={"description": "version of the compiler that produced the graphs"})
    torch_version: str
    instance_type: str | None = None


@dataclass(kw_only=True, slots=True)
class TensorSpec:
    """One static input or output of a compiled graph."""

    name: str
    shape: list[int] = field(metadata={"items": {"minimum": 0}})
    dtype: str


@dataclass(kw_only=True, slots=True)
class GraphEntry:
    """A compiled graph file and its static signature."""

    file: str = field(metadata={"pattern": _REL_PATH, "description": _REL_PATH_MEANING})
    sha256: str = field(metadata={"pattern": _SHA256, "description": _SHA256_MEANING})
    role: str = field(metadata={"enum": list(GRAPH_ROLES)})
    bucket: int | None = field(
        default=None,
        metadata={"minimum": 1, "description": "context_encoding: the prompt bucket; token_generation: the KV positions "
                                               "it attends over (null: all sequence_length of them); chunked_prefill: "
                                               "the chunk length; encoder: the sequence length (one of "
                                               "context_buckets)"},
    )
    rows: int | None = field(
        default=None,
        metadata={"minimum": 1, "description": "token_generation over this many of the slots, named by its seq_ids "
                                               "input (other slots untouched); null: every slot. encoder: the "
                                               "batch rows of the graph (one of batch_buckets)"},
    )
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    mutated_state: list[str] = field(
        default_factory=list, metadata={"description": "state tensors (KV cache) the graph updates in place"}
    )


SHARD_LAYOUTS = ("vocab", "partial")


@dataclass(kw_only=True, slots=True)
class ShardSpec:
    """How a parameter splits across tensor-parallel ranks.

    `partition_dim` None means replicated. `segments` lists the sizes along `partition_dim` of the
    tensors fused into this one (for example q, k and v in a fused qkv weight): each segment is
    split across ranks separately, so that every rank holds matching q, k and v heads.
    """

    partition_dim: int | None = field(default=None, metadata={"minimum": 0})
    segments: list[int] | None = field(default=None, metadata={"items": {"minimum": 1}})
    granule: int | None = field(
        default=None, metadata={"minimum": 1, "description": "each rank's slice of a segment must be a multiple of "
                                "this (head_dim for attention projections, so no head is split across ranks)"},
    )
    replicable: list[bool] | None = field(
        default=None, metadata={"omit_default": True, "description": "per segment: whether a segment of fewer "
                                "granules than ranks is replicated (kv heads: rank r holds granule r // (tp / "
                                "granules)) instead of refused"},
    )
    layout: str | None = field(
        default=None, metadata={"enum": [*SHARD_LAYOUTS, None], "omit_default": True, "description": "vocab: vocabulary-parallel, each rank "
                                "holds ceil(vocab/tp) rows plus one zero row that ids outside its range select; "
                                "partial: rank 0 holds the tensor and the others zeros (the bias of a layer whose "
                                "partial outputs are summed across ranks)"},
    )
    expert_dim: int | None = field(
        default=None, metadata={"minimum": 0, "omit_default": True, "description": "the dim enumerating experts: "
                                "with expert_parallel_size ep, rank r holds the (r // (tp / ep))-th of ep equal groups "
                                "of experts, and of those its (r % (tp / ep))-th slice along partition_dim; absent: not "
                                "an expert tensor"},
    )


@dataclass(kw_only=True, slots=True)
class FileEntry:
    path: str = field(metadata={"pattern": _REL_PATH, "description": _REL_PATH_MEANING})
    sha256: str = field(metadata={"pattern": _SHA256, "description": _SHA256_MEANING})
    rank: int | None = field(
        default=None, metadata={"minimum": 0, "omit_default": True, "description": "the tensor-parallel rank whose shard this file holds; "
                                "absent: every rank loads it"},
    )


# onednn_packed_linear: a weight reordered by oneDNN for `mkldnn._linear_pointwise` (args.batch_size:
# the GEMM's M hint). mkl_packed_linear: MKL's packed GEMM layout (artifacts of neuron-export 0.1.0).
# int4pack_cpu: a 4-bit `Quantization` weight (uint8, two values a byte) repacked for
# `aten._weight_int4pack_mm_for_cpu` (`aten._convert_weight_to_int4pack_for_cpu`; args.inner_k_tiles).
DERIVED_OPS = ("onednn_packed_linear", "mkl_packed_linear", "int4pack_cpu")


@dataclass(kw_only=True, slots=True)
class DerivedTensor:
    """A graph constant the runtime computes at load from a stored tensor, never stored itself
    (e.g. a weight pre-packed for the CPU's GEMV kernels: its layout belongs to the loading machine)."""

    op: str = field(metadata={"enum": list(DERIVED_OPS)})
    source: str
    args: dict[str, Any] = field(default_factory=dict)


QUANT_METHODS = {"int8-weight-only": 8, "int4-weight-only": 4}  # method -> bits
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what aten's int4 CPU kernel takes


@dataclass(kw_only=True, slots=True)
class Quantization:
    """Weight-only quantization of the graphs' linear layers; activations stay in `torch_dtype` (bfloat16).

    int8-weight-only: `<module>.qweight` int8 (out, in) and `<module>.scales` (out,), w = qweight * scales
    (symmetric, one scale per output channel). int4-weight-only: `<module>.qweight` uint8 (out, in / 2), element
    2j in the low nibble of byte j and 2j+1 in the high one, q in 0..15, and `<module>.scales_and_zeros`
    (in / group_size, out, 2) holding (scale, zero) per group: w = (q - 8) * scale + zero (aten's int4 convention).
    """

    method: str = field(metadata={"enum": list(QUANT_METHODS)})
    bits: int = field(metadata={"enum": sorted(set(QUANT_METHODS.values()))})
    group_size: int | None = field(
        default=None, metadata={"minimum": 1, "description": "input channels sharing a scale (int4); null: one "
                                                            "scale per output channel (int8)"},
    )
    scale_dtype: str = field(default="bfloat16", metadata={"enum": ["bfloat16"]})
    modules: list[str] = field(metadata={"description": "the quantized linear modules (graph names); every other "
                                                        "weight (embeddings, norms) keeps torch_dtype"})
    source: str = field(
        default="export", metadata={"description": "'export': quantized by neuron-export from floating-point "
                                                   "weights; 'gguf:<TYPE>': taken as they are from GGUF blocks"},
    )
    requantized: list[str] = field(
        default_factory=list, metadata={"description": "modules of a gguf source whose GGUF type does not map onto "
                                                      "this method: dequantized, then quantized again"},
    )

    def graph_fields(self) -> dict[str, Any]:
        """What the compiled graphs depend on (not where the values came from): part of every graph's cache key."""
        return {"method": self.method, "bits": self.bits, "group_size": self.group_size,
                "scale_dtype": self.scale_dtype, "modules": list(self.modules)}

    def validate(self, torch_dtype: str, tensor_parallel_size: int) -> None:
        bits = QUANT_METHODS[self.method]
        if self.bits != bits:
            raise NeuronConfigError("quantization.bits", self.bits, f"contradicts method '{self.method}'",
                                    allowed=str(bits), fix=f"set bits to {bits}")
        if bits == 4 and self.group_size not in INT4_GROUP_SIZES:
            raise NeuronConfigError("quantization.group_size", self.group_size, "is not a group size of the int4 "
                                    "kernel", allowed=", ".join(map(str, INT4_GROUP_SIZES)),
                                    fix="re-export with --quant-group-size 32")
        if bits == 8 and self.group_size is not None:
            raise NeuronConfigError("quantization.group_size", self.group_size, "must be null for int8-weight-only "
                                    "(one scale per output channel)", allowed="null", fix="drop group_size")
        if torch_dtype != "bfloat16":
            raise NeuronConfigError("torch_dtype", torch_dtype, f"must be bfloat16 with quantization {self.method}: "
                                    "the quantized kernels are 10-30x slower on float32 activations",
                                    allowed="bfloat16", fix="re-export with --torch_dtype bfloat16 (or auto)")
        if tensor_parallel_size != 1:
            raise NeuronConfigError("tensor_parallel_size", tensor_parallel_size, "must be 1 for a quantized "
                                    "artifact (quantized tensors are not sharded)", allowed="1",
                                    fix="re-export without --quantize, or with --tensor_parallel_size 1")
        if not self.modules:
            raise NeuronConfigError("quantization.modules", self.modules, "is empty",
                                    allowed="the quantized modules' names", fix="re-export the model")
        stray = sorted(set(self.requantized) - set(self.modules))
        if stray:
            raise NeuronConfigError("quantization.requantized", stray, "names modules that are not quantized",
                                    allowed="names listed in quantization.modules", fix="re-export the model")
        if not (self.source == "export" or self.source.startswith("gguf:")):
            raise NeuronConfigError("quantization.source", self.source, "is not a known source",
                                    allowed="'export' or 'gguf:<GGML type>'", fix="re-export the model")


@dataclass(kw_only=True, slots=True)
class Pooling:
    """How an embedding artifact turns token states into one vector per input, as sentence-transformers' Pooling and
    Normalize modules do. The encoder graph pools (its `sentence_embedding` output); the runtime normalizes."""

    mode: str = field(metadata={"enum": list(POOLING_MODES)})
    normalize: bool = field(
        default=False, metadata={"description": "the model's embeddings are L2-normalized (a Normalize module, or "
                                                "a decoder embedder's recipe): what encode() and /v1/embeddings "
                                                "return by default"},
    )


@dataclass(kw_only=True, slots=True)
class WeightsSpec:
    """The weight files (bound to the graphs at load) and the per-parameter sharding plan."""

    files: list[FileEntry]
    sharding: dict[str, ShardSpec] = field(default_factory=dict)
    aliases: dict[str, str] = field(
        default_factory=dict, metadata={"description": "graph constant name -> stored tensor name (tied weights)"}
    )
    derived: dict[str, DerivedTensor] = field(
        default_factory=dict, metadata={"description": "graph constant name -> how the runtime computes it at load"}
    )


@dataclass(kw_only=True, slots=True)
class NeuronConfig:
    """The contents of `neuron_config.json`."""

    schema_version: int = field(metadata={"minimum": 1})
    producer: Producer
    task: str = field(metadata={"enum": list(TASKS)})
    model_type: str
    architecture: str
    checkpoint_id: str | None = None
    checkpoint_revision: str | None = None
    batch_size: int = field(metadata={"minimum": 1})
    max_batch_size: int = field(metadata={"minimum": 1})
    continuous_batching: bool = False
    sequence_length: int = field(metadata={"minimum": 1})
    max_context_length: int = field(metadata={"minimum": 1})
    context_buckets: list[int] = field(metadata={"items": {"minimum": 1}})
    chunk_buckets: list[int] = field(
        default_factory=list,
        metadata={"items": {"minimum": 1}, "omit_default": True,
                  "description": "chunk lengths of the chunked_prefill graphs (a chunk of a prompt encoded at any offset "
                                 "into a slot's KV cache); absent or empty: no chunked prefill"},
    )
    batch_buckets: list[int] = field(
        default_factory=list,
        metadata={"items": {"minimum": 1}, "omit_default": True,
                  "description": "encoder tasks: the batch rows of the encoder graphs, strictly increasing and ending "
                                 "at batch_size; absent or empty: [batch_size]"},
    )
    pooling: Pooling | None = field(
        default=None, metadata={"omit_default": True,
                                "description": "feature-extraction: how token states pool into sentence embeddings "
                                               "(the sentence_embedding output); null: token states only"},
    )
    tensor_parallel_size: int = field(default=1, metadata={"minimum": 1})
    expert_parallel_size: int = field(
        default=1, metadata={"minimum": 1, "omit_default": True,
                             "description": "mixture of experts: the tensor-parallel ranks form this many groups, each "
                                            "holding num_experts / expert_parallel_size whole experts (weights.sharding "
                                            "expert_dim); divides tensor_parallel_size"},
    )
    torch_dtype: str = field(metadata={"enum": list(DTYPES)})
    on_device_sampling: bool = False
    max_topk: int = field(default=256, metadata={"minimum": 1})
    speculation_length: int = field(default=0, metadata={"minimum": 0})
    quantization: Quantization | None = field(
        default=None, metadata={"description": "weight-only quantization of the linear layers; null: none"},
    )
    target: Target
    graphs: dict[str, GraphEntry]
    weights: WeightsSpec
    state: list[TensorSpec] = field(
        default_factory=list,
        metadata={"description": "state tensors (KV cache) the runtime allocates zeroed and shares between graphs"},
    )
    metadata: dict[str, Any] = field(default_factory=dict)

    # ---- reading and writing -------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NeuronConfig:
        if not isinstance(data, dict):
            raise NeuronConfigError("<root>", data, "must be a JSON object", allowed="an object")
        data = _check_schema_version(_apply_aliases(dict(data)))
        config = dataclass_from_json(cls, data)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def load(cls, path: str | os.PathLike) -> NeuronConfig:
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        return cls.from_dict(_read_json(path))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        self.validate()
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
        return path

    def replace(self, **changes: Any) -> NeuronConfig:
        return replace(self, **changes)

    # ---- cross-field checks ----------------------------------------------------------------
    def validate(self) -> None:
        """Checks that involve more than one field (single-field checks happen on read)."""
        self.validate_shapes(
            batch_size=self.batch_size, max_batch_size=self.max_batch_size, sequence_length=self.sequence_length,
            max_context_length=self.max_context_length, context_buckets=self.context_buckets,
            chunk_buckets=self.chunk_buckets,
        )
        if self.quantization is not None:
            self.quantization.validate(self.torch_dtype, self.tensor_parallel_size)
        if self.speculation_length >= self.sequence_length:
            raise NeuronConfigError(
                "speculation_length", self.speculation_length, f"must be below sequence_length ({self.sequence_length})",
                allowed=f"0..{self.sequence_length - 1}", fix="lower speculation_length or raise sequence_length",
            )
        if not self.graphs:
            raise NeuronConfigError("graphs", self.graphs, "is empty", allowed="at least one compiled graph")
        for name, graph in self.graphs.items():
            self._validate_graph(name, graph)
        if self.task == "text-generation":
            self._validate_decoder_graphs()
        else:
            self._validate_encoder()
        self._validate_rank_files()
        if self.tensor_parallel_size % self.expert_parallel_size:
            raise NeuronConfigError(
                "expert_parallel_size", self.expert_parallel_size,
                f"must divide tensor_parallel_size ({self.tensor_parallel_size}): the ranks form expert_parallel_size "
                "groups", allowed=f"a divisor of {self.tensor_parallel_size}",
                fix="re-export with an --expert_parallel_size that divides --tensor_parallel_size",
            )
        for name, spec in self.weights.sharding.items():
            if spec.segments is not None and spec.partition_dim is None:
                raise NeuronConfigError(
                    f"weights.sharding.{name}.segments", spec.segments, "requires a partition_dim",
                    allowed="null when partition_dim is null",
                    fix="set partition_dim, or drop segments for a replicated parameter",
                )

    def _validate_rank_files(self) -> None:
        """Per-rank weight files: each rank 0..tp-1 exactly once, or none (every rank loads the same files)."""
        tp = self.tensor_parallel_size
        ranks = [f.rank for f in self.weights.files if f.rank is not None]
        if not ranks:
            return
        if sorted(ranks) != list(range(tp)):
            raise NeuronConfigError(
                "weights.files[].rank", sorted(ranks), f"must name each rank of tensor_parallel_size={tp} once",
                allowed=f"{list(range(tp))}", fix="re-export the model",
            )

    @staticmethod
    def validate_shapes(
        *, batch_size: int, max_batch_size: int, sequence_length: int, max_context_length: int, context_buckets: list[int],
        chunk_buckets: list[int] = (),
    ) -> None:
        """The shape rules, usable before a config exists (an exporter checks its options with them)."""
        for name, value in (("batch_size", batch_size), ("max_batch_size", max_batch_size),
                            ("sequence_length", sequence_length), ("max_context_length", max_context_length)):
            if value < 1:
                raise NeuronConfigError(name, value, "must be >= 1", allowed="positive integers")
        if batch_size > max_batch_size:
            raise NeuronConfigError(
                "batch_size", batch_size, f"exceeds max_batch_size ({max_batch_size})",
                allowed=f"1..{max_batch_size}", fix="lower batch_size or raise max_batch_size",
            )
        if max_context_length > sequence_length:
            raise NeuronConfigError(
                "max_context_length", max_context_length, f"exceeds sequence_length ({sequence_length})",
                allowed=f"1..{sequence_length}", fix="lower max_context_length or raise sequence_length",
            )
        buckets = context_buckets
        if not buckets:
            raise NeuronConfigError("context_buckets", buckets, "is empty", allowed="a non-empty increasing list")
        if min(buckets) < 1:
            raise NeuronConfigError("context_buckets", buckets, "holds a bucket below 1", allowed="positive sizes")
        if sorted(set(buckets)) != buckets:
            raise NeuronConfigError(
                "context_buckets", buckets, "must be strictly increasing",
                allowed="a strictly increasing list of integers", fix=f"use {sorted(set(buckets))}",
            )
        if buckets[-1] > max_context_length:
            raise NeuronConfigError(
                "context_buckets", buckets, f"has bucket {buckets[-1]} above max_context_length ({max_context_length})",
                allowed=f"buckets <= {max_context_length}",
                fix="drop the larger buckets or raise max_context_length",
            )
        if buckets[-1] != max_context_length:
            raise NeuronConfigError(
                "context_buckets", buckets,
                f"must end at max_context_length ({max_context_length}) so that every allowed prompt fits a bucket",
                allowed=f"a list whose last bucket is {max_context_length}",
                fix=f"append {max_context_length}",
            )
        chunks = list(chunk_buckets)
        if chunks and (min(chunks) < 1 or max(chunks) > max_context_length):
            raise NeuronConfigError(
                "chunk_buckets", chunks, f"holds a chunk length outside 1..max_context_length ({max_context_length})",
                allowed=f"chunk lengths 1..{max_context_length}",
                fix=f"drop {[c for c in chunks if not 1 <= c <= max_context_length]} or raise max_context_length",
            )
        if sorted(set(chunks)) != chunks:
            raise NeuronConfigError(
                "chunk_buckets", chunks, "must be strictly increasing",
                allowed="a strictly increasing list of integers (or empty)", fix=f"use {sorted(set(chunks))}",
            )

    def _validate_graph(self, name: str, graph: GraphEntry) -> None:
        path = f"graphs.{name}"
        if graph.role == "context_encoding":
            if graph.bucket is None or graph.bucket not in self.context_buckets:
                raise NeuronConfigError(
                    f"{path}.bucket", graph.bucket, "is not one of context_buckets",
                    allowed=", ".join(map(str, self.context_buckets)),
                )
        elif graph.role == "chunked_prefill":
            if graph.bucket is None or graph.bucket not in self.chunk_buckets:
                raise NeuronConfigError(
                    f"{path}.bucket", graph.bucket, "is not one of chunk_buckets",
                    allowed=", ".join(map(str, self.chunk_buckets)) or "none (chunk_buckets is empty)",
                    fix="re-export the model",
                )
        elif graph.role == "token_generation":
            if graph.bucket is not None and not 1 <= graph.bucket < self.sequence_length:
                raise NeuronConfigError(
                    f"{path}.bucket", graph.bucket, f"is not below sequence_length ({self.sequence_length})",
                    allowed=f"1..{self.sequence_length - 1}, or null for a graph over the whole KV cache",
                    fix="re-export the model",
                )
        elif graph.role == "encoder":
            if graph.bucket not in self.context_buckets or graph.rows not in self.encoder_batch_buckets:
                raise NeuronConfigError(
                    f"{path}", f"bucket={graph.bucket} rows={graph.rows}", "is not a (batch, sequence) bucket pair",
                    allowed=f"rows in {self.encoder_batch_buckets}, bucket in {self.context_buckets}",
                    fix="re-export the model",
                )
            return
        elif graph.bucket is not None:
            raise NeuronConfigError(
                f"{path}.bucket", graph.bucket, f"must be null for role '{graph.role}'", allowed="null",
                fix="only context_encoding, token_generation (KV length), chunked_prefill and encoder graphs have a "
                    "bucket",
            )
        if graph.rows is not None:
            if graph.role != "token_generation":
                raise NeuronConfigError(f"{path}.rows", graph.rows, f"must be null for role '{graph.role}'",
                                        allowed="null", fix="only token_generation graphs run a subset of the slots")
            if not 1 <= graph.rows < self.batch_size:
                raise NeuronConfigError(f"{path}.rows", graph.rows, f"is not below batch_size ({self.batch_size})",
                                        allowed=f"1..{self.batch_size - 1}" if self.batch_size > 1 else "null",
                                        fix="a graph over every slot has rows null")

    def _validate_decoder_graphs(self) -> None:
        """A decoder runs every bucket and the full batch: each must have its graph (not only be named)."""
        encoders = sorted(n for n, g in self.graphs.items() if g.role == "encoder")
        if encoders:
            raise NeuronConfigError("graphs", encoders, "are encoder graphs, but task is 'text-generation'",
                                    allowed="context_encoding, token_generation, chunked_prefill and speculation graphs",
                                    fix="re-export the model")
        have = {g.bucket for g in self.graphs.values() if g.role == "context_encoding"}
        missing = [b for b in self.context_buckets if b not in have]
        if missing:
            raise NeuronConfigError(
                "context_buckets", self.context_buckets, f"names bucket(s) {missing} that no context_encoding graph has",
                allowed=f"buckets with a graph: {sorted(have)}", fix="re-export the model, or drop those buckets",
            )
        chunked = {g.bucket for g in self.graphs.values() if g.role == "chunked_prefill"}
        missing = [c for c in self.chunk_buckets if c not in chunked]
        if missing:
            raise NeuronConfigError(
                "chunk_buckets", self.chunk_buckets, f"names chunk length(s) {missing} that no chunked_prefill graph has",
                allowed=f"chunk lengths with a graph: {sorted(chunked)}", fix="re-export the model, or drop them",
            )
        decode = [g for g in self.graphs.values() if g.role == "token_generation"]
        if not any(g.rows is None and g.bucket is None for g in decode):
            raise NeuronConfigError("graphs", sorted(self.graphs), "has no token_generation graph over the whole batch "
                                    "and KV cache", allowed="a token_generation graph with rows and bucket null",
                                    fix="re-export the model")
        # A context past every KV bucket must still decode: each row count needs its graph over the whole cache.
        short = sorted({g.rows for g in decode if g.rows is not None} - {g.rows for g in decode if g.bucket is None})
        if short:
            raise NeuronConfigError("graphs", sorted(self.graphs), f"has KV-bucketed token_generation graphs over rows "
                                    f"{short} but none of them over the whole KV cache",
                                    allowed="for each rows value, a token_generation graph with bucket null",
                                    fix="re-export the model")

    def _validate_encoder(self) -> None:
        """An encoder artifact: encoder graphs only, one for every (batch bucket, sequence bucket) pair, no KV cache."""
        wrong = sorted(n for n, g in self.graphs.items() if g.role != "encoder")
        if wrong:
            raise NeuronConfigError("graphs", wrong, f"are not encoder graphs, but task is '{self.task}'",
                                    allowed="role 'encoder' only", fix="re-export the model")
        for name, value, allowed in (("chunk_buckets", self.chunk_buckets, []), ("state", self.state, []),
                                     ("on_device_sampling", self.on_device_sampling, False),
                                     ("speculation_length", self.speculation_length, 0)):
            if value != allowed:
                raise NeuronConfigError(name, value, f"has no meaning for task '{self.task}' (an encoder has no KV "
                                        "cache and samples nothing)", allowed=repr(allowed), fix=f"drop {name}")
        if self.sequence_length != self.max_context_length:
            raise NeuronConfigError("sequence_length", self.sequence_length, "must equal max_context_length "
                                    f"({self.max_context_length}) for an encoder: its longest input",
                                    allowed=str(self.max_context_length), fix="re-export the model")
        rows = self.batch_buckets
        if rows and (sorted(set(rows)) != rows or rows[-1] != self.batch_size):
            raise NeuronConfigError("batch_buckets", rows, f"must be strictly increasing and end at batch_size "
                                    f"({self.batch_size})", allowed=f"e.g. [1, {self.batch_size}]",
                                    fix="re-export the model")
        have = {(g.rows, g.bucket) for g in self.graphs.values()}
        missing = [(r, b) for r in self.encoder_batch_buckets for b in self.context_buckets if (r, b) not in have]
        if missing:
            raise NeuronConfigError("graphs", sorted(self.graphs), f"lacks encoder graphs for (rows, bucket) {missing}",
                                    allowed="a graph for every batch bucket and sequence bucket",
                                    fix="re-export the model")
        if self.pooling is not None and self.task not in ("feature-extraction", "sentence-similarity"):
            raise NeuronConfigError("pooling", self.pooling.mode, f"applies to feature-extraction, not '{self.task}'",
                                    allowed="null", fix="drop pooling")

    @property
    def is_encoder(self) -> bool:
        return self.task in ENCODER_TASKS

    @property
    def encoder_batch_buckets(self) -> list[int]:
        """The encoder graphs' batch rows, smallest first."""
        return list(self.batch_buckets) or [self.batch_size]

    def encoder_graph(self, rows: int, length: int) -> str:
        """The encoder graph of the smallest batch bucket >= rows and the smallest sequence bucket >= length."""
        batch = min((r for r in self.encoder_batch_buckets if r >= rows), default=None)
        if batch is None:
            raise ValueError(f"{rows} rows exceed batch_size={self.batch_size}; split the batch")
        return self.graph_for("encoder", bucket=self.bucket_for(length), rows=batch)

    def graph_for(self, role: str, *, bucket: int | None = None, rows: int | None = None) -> str:
        """The name of the graph with this role, bucket and row count (validate() made sure it exists)."""
        for name, graph in self.graphs.items():
            if graph.role == role and graph.bucket == bucket and graph.rows == rows:
                return name
        raise KeyError(f"no {role} graph with bucket={bucket} rows={rows}")

    # ---- helpers for runtimes ----------------------------------------------------------------
    def bucket_for(self, length: int) -> int:
        """The smallest context bucket that holds a prompt of `length` tokens."""
        for bucket in self.context_buckets:
            if length <= bucket:
                return bucket
        raise ValueError(
            f"Prompt of {length} tokens exceeds max_context_length={self.max_context_length} of this artifact; "
            "shorten the prompt or re-export with a larger --max_context_length."
        )

    @property
    def max_prompt_length(self) -> int:
        """The longest prompt the artifact encodes: with chunked-prefill graphs, all but the last cache position
        (left for the first generated token); without them, the largest prompt bucket."""
        return self.sequence_length - 1 if self.chunk_buckets else self.max_context_length

    def chunk_plan(self, length: int) -> list[int]:
        """The chunk graphs that encode `length` tokens, in order: the largest chunk for the bulk, then the smallest
        chunk that holds the tail (the last chunk is padded). Empty for an artifact without chunked_prefill graphs."""
        plan, left = [], length
        while self.chunk_buckets and left > 0:
            size = min((c for c in self.chunk_buckets if c >= left), default=self.chunk_buckets[-1])
            plan.append(size)
            left -= size
        return plan

    @property
    def decode_rows(self) -> list[int]:
        """Row counts of the token-generation graphs over a subset of the slots, smallest first."""
        return sorted({g.rows for g in self.graphs.values() if g.role == "token_generation" and g.rows is not None})

    def rows_for(self, n: int) -> int | None:
        """The smallest sub-batch decode graph that holds n sequences, or None (use the full batch)."""
        return min((r for r in self.decode_rows if r >= n), default=None)

    @property
    def kv_buckets(self) -> list[int]:
        """KV lengths of the token-generation graphs that attend over part of the cache, smallest first."""
        return sorted({g.bucket for g in self.graphs.values() if g.role == "token_generation" and g.bucket is not None})

    def kv_bucket_for(self, length: int, rows: int | None = None) -> int | None:
        """The smallest KV bucket holding `length` positions that has a token-generation graph over `rows`
        (None: every slot); None when only the graph over the whole cache does."""
        return min((g.bucket for g in self.graphs.values() if g.role == "token_generation" and g.rows == rows
                    and g.bucket is not None and g.bucket >= length), default=None)

    def graphs_by_role(self, role: str) -> dict[str, GraphEntry]:
        return {k: g for k, g in self.graphs.items() if g.role == role}


def _read_json(path: Path) -> Any:
    """Parse a config file, turning every way it can be broken into a NeuronConfigError naming the file."""

    def bad(problem: str) -> NeuronConfigError:
        # The value is shortened in the message when long, so the problem names the whole path.
        return NeuronConfigError("<root>", str(path), problem, allowed="a JSON object",
                                 fix="repair the file or export the artifact again")

    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise bad(f"is {size} bytes, more than a neuron_config.json may be ({MAX_CONFIG_BYTES}) ({path})")
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise bad(f"is not UTF-8 text (byte {err.start} is {err.object[err.start:err.start + 1]!r} in {path})") from None
    except json.JSONDecodeError as err:
        raise bad(f"is not valid JSON ({err.msg} at line {err.lineno} column {err.colno} of {path})") from None
    except RecursionError:
        raise bad(f"nests deeper than the JSON reader can follow ({path}; a config nests at most {MAX_NESTING} "
                  "levels)") from None
    except OSError as err:
        raise bad(f"cannot be read ({err.strerror or err}: {path})") from None
    if _depth(data) > MAX_NESTING:
        raise bad(f"nests deeper than {MAX_NESTING} levels ({path})")
    return data


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (a hostile file must not exhaust the stack here)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_NESTING:
            return depth
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _apply_aliases(data: dict[str, Any]) -> dict[str, Any]:
    if "tp_degree" in data:
        alias = data.pop("tp_degree")
        if "tensor_parallel_size" in data and data["tensor_parallel_size"] != alias:
            raise NeuronConfigError(
                "tp_degree", alias, f"contradicts tensor_parallel_size ({data['tensor_parallel_size']})",
                allowed=f"{data['tensor_parallel_size']} (the value of tensor_parallel_size)",
                fix="keep only tensor_parallel_size",
            )
        data["tensor_parallel_size"] = alias
    return data


def _check_schema_version(data: dict[str, Any]) -> dict[str, Any]:
    if "schema_version" not in data:
        raise NeuronConfigError(
            "schema_version", None, "is required but missing", allowed="an integer",
            fix=f"add \"schema_version\": {SCHEMA_VERSION}",
        )
    version = from_json(int, data["schema_version"], "schema_version")
    if version > SCHEMA_VERSION:
        from neuron_cache.__about__ import __version__

        producer = data.get("producer")
        made_by = ""
        if isinstance(producer, dict) and producer.get("package"):
            made_by = f" (written by {' '.join(str(producer[k]) for k in ('package', 'version') if producer.get(k))})"
        raise SchemaVersionError(
            "schema_version", version,
            f"is newer than this reader{made_by}: neuron-cache {__version__} reads schema_version <= {SCHEMA_VERSION}",
            allowed=f"1..{SCHEMA_VERSION}",
            fix=f"upgrade with: pip install -U 'neuron-cache>={first_reader_of(version)}'",
        )
    return data
