"""Build the signature a backend writes into each graph file (format: `neuron_cache.signature`).

It records what the graph was traced and compiled for — every constant's name, shape and dtype, the
inputs and outputs, the static shape fields, and the CPU features its native code may use — from the
ExportedProgram itself, so that the runtime can check a config and a set of tensors against the
graph instead of trusting an editable `neuron_config.json`.
"""

from __future__ import annotations

import torch

from neuron_cache import TensorSpec
from neuron_cache.signature import GraphSignature
from neuron_export.backends.base import GraphJob

# gcc `-m` flags Inductor compiles CPU kernels with -> the Linux /proc/cpuinfo flag that must be present.
_GCC_TO_CPUINFO = {"avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16", "avx512fp16": "avx512_fp16",
                   "amx-tile": "amx_tile", "amx-bf16": "amx_bf16", "amx-int8": "amx_int8", "amx-fp16": "amx_fp16"}


def _spec(name: str, t: torch.Tensor) -> TensorSpec:
    return TensorSpec(name=name, shape=[int(d) for d in t.shape], dtype=str(t.dtype).removeprefix("torch."))


def graph_signature(job: GraphJob, ep: torch.export.ExportedProgram, inputs: list[dict], outputs: list[dict],
                    cpu_features: list[str]) -> GraphSignature:
    sig = ep.graph_signature
    constants = {}
    for name in [*sig.parameters, *sig.buffers]:
        tensor = ep.state_dict.get(name, ep.constants.get(name))
        constants[name] = _spec(name, tensor)
    return GraphSignature(
        graph=job.name, static={**job.static, "bucket": job.bucket, "rows": job.static.get("rows")},
        inputs=[TensorSpec(**s) for s in inputs], outputs=[TensorSpec(**s) for s in outputs],
        constants=constants, cpu_features=cpu_features,
    )


def inductor_cpu_features() -> list[str]:
    """The CPU features of the vector ISA Inductor compiles for on this machine (cpuinfo flag names).

    Read from the compiler flags Inductor passes, not from its ISA name: on an AVX512-BF16 CPU the
    "avx512" ISA also compiles with -mavx512bf16, which an AVX512 CPU without BF16 cannot execute.
    """
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    flags = pick_vec_isa().build_arch_flags().split()
    names = {f[2:] for f in flags if f.startswith("-m") and not f.startswith("-march")}
    return sorted(_GCC_TO_CPUINFO.get(n, n.replace("-", "_")) for n in names)
