"""A compiled graph's own record of what it was built for, carried *inside* the graph file.

`neuron_config.json` is an editable text file: a stale or crafted one can claim a batch size, a KV
shape or a weight shape the compiled code was never built for, and the compiled code binds tensors
by pointer, so believing it means out-of-bounds reads and writes. The backend therefore writes this
signature into the graph file itself at compile time (AOTInductor: the package metadata under
`SIGNATURE_KEY`; torch.export: an extra file of that name). The runtime reads it back from the graph
and checks every constant, state tensor, input and shape field of the config against it before the
graph runs. The graph file is covered by the trust check (`neuron_cache.trust`), so its signature is
as trustworthy as the code it describes.

No torch here: tensors are described by name, shape and dtype name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from neuron_cache.config import NeuronConfig, TensorSpec

SIGNATURE_KEY = "neuron.signature"
SIGNATURE_VERSION = 1
# The config fields a single graph is compiled for (graph-level values such as the bucket are in `static` too).
# `quantization` is compared as `Quantization.graph_fields()` (null when the graph is not quantized).
STATIC_FIELDS = ("batch_size", "sequence_length", "torch_dtype", "on_device_sampling", "max_topk",
                 "tensor_parallel_size", "quantization")
# On-device sampling: what each row of a graph's `sampling_params` input (rows, 3) holds, in this order. The
# graph (neuron-export) reads the columns by these names and the runtime (neuron-infer) writes them so.
SAMPLING_ROW = ("top_k", "top_p", "temperature")
# Greedy is top_k=1, as in NxDI (top_p and temperature then do not matter).
GREEDY_ROW = (1.0, 1.0, 1.0)


class SignatureError(ValueError):
    """A graph and the config (or the tensors) that would be bound to it disagree."""


@dataclass(kw_only=True, slots=True)
class GraphSignature:
    graph: str
    static: dict[str, Any]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    constants: dict[str, TensorSpec]
    # CPU features (Linux /proc/cpuinfo flag names) the compiled code may execute; empty for graphs
    # that hold no native CPU code.
    cpu_features: list[str] = field(default_factory=list)
    version: int = SIGNATURE_VERSION

    def to_json(self) -> str:
        spec = lambda t: {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}  # noqa: E731
        return json.dumps({
            "version": self.version, "graph": self.graph, "static": self.static,
            "inputs": [spec(t) for t in self.inputs], "outputs": [spec(t) for t in self.outputs],
            "constants": [spec(t) for t in self.constants.values()], "cpu_features": list(self.cpu_features),
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> GraphSignature:
        """Parse a signature read from the graph file `where` (named in every error)."""
        try:
            data = json.loads(text)
            version = int(data["version"])
            if version > SIGNATURE_VERSION:
                raise SignatureError(f"{where}: graph signature version {version} is newer than this reader "
                                     f"({SIGNATURE_VERSION}); upgrade neuron-cache")
            specs = lambda items: [TensorSpec(name=str(t["name"]), shape=[int(d) for d in t["shape"]],  # noqa: E731
                                              dtype=str(t["dtype"])) for t in items]
            return cls(graph=str(data["graph"]), static=dict(data["static"]), inputs=specs(data["inputs"]),
                       outputs=specs(data["outputs"]), constants={t.name: t for t in specs(data["constants"])},
                       cpu_features=[str(f) for f in data.get("cpu_features", [])], version=version)
        except SignatureError:
            raise
        except (ValueError, KeyError, TypeError) as err:
            raise SignatureError(f"{where}: the graph's embedded signature is unreadable ({err!r}); re-export the "
                                 "model") from None

    # ---- checks that need no tensors -----------------------------------------------------------
    def check_config(self, config: NeuronConfig, name: str, where: str) -> None:
        """The config's shape fields and its entry for this graph must be what the graph was compiled for."""
        entry = config.graphs[name]
        expected = {**{f: self.static.get(f) for f in STATIC_FIELDS if f in self.static},
                    "bucket": self.static.get("bucket"), "rows": self.static.get("rows")}
        found = {**{f: static_value(config, f) for f in STATIC_FIELDS if f in self.static},
                 "bucket": entry.bucket, "rows": entry.rows}
        for key, want in expected.items():
            if found[key] != want:
                field_name = key if key in STATIC_FIELDS else f"graphs.{name}.{key}"
                raise SignatureError(
                    f"{where} was compiled for {key}={want!r}, but neuron_config.json says {field_name}="
                    f"{found[key]!r}: the config does not describe this graph. Re-export the model (or restore the "
                    "artifact's original neuron_config.json)."
                )
        for label, declared, compiled in (("inputs", entry.inputs, self.inputs), ("outputs", entry.outputs, self.outputs)):
            if _specs(declared) != _specs(compiled):
                raise SignatureError(
                    f"{where}: neuron_config.json graphs.{name}.{label} = {_show(declared)}, but the graph was compiled "
                    f"with {_show(compiled)}. Re-export the model (or restore its neuron_config.json)."
                )


def static_value(config: NeuronConfig, name: str) -> Any:
    """The value of config field `name` as a graph's `static` records it."""
    value = getattr(config, name)
    if name == "quantization":
        return None if value is None else value.graph_fields()
    return value


def _specs(items: list[TensorSpec]) -> list[tuple[str, tuple[int, ...], str]]:
    return [(t.name, tuple(t.shape), t.dtype) for t in items]


def _show(items: list[TensorSpec]) -> str:
    return "[" + ", ".join(f"{t.name} {list(t.shape)} {t.dtype}" for t in items) + "]"
