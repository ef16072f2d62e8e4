"""Portable PyTorch ahead-of-time backends.

- `torch-aot` (default): torch.export, then an AOTInductor package compiled to C++ (CPU here, CUDA
  where present). Constants are *not* baked into the package (`package_constants_in_so=False`):
  the runtime (neuron-infer) binds weights and KV cache by pointer, so graphs sharing the same
  tensors share weights and cache.
- `torch-export`: the ExportedProgram alone, run without C++ compilation. ~10x faster to build,
  meant for tests; the saved program carries its constants, which neuron-infer's loader replaces.

Backend-specific kernels are this module's choice, not the model's: for target cpu, torch-aot traces
each graph with `cpu_kernels.applied` (pre-packed decode weights, float32 prefill GEMMs); torch-export and
cuda graphs trace the shared model as it is.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from neuron_cache.signature import SIGNATURE_KEY
from neuron_export.backends import cpu_kernels, cpu_quant
from neuron_export.backends.base import Backend, CompiledGraph, GraphJob, KernelChoice, tensor_spec
from neuron_export.backends.signature import graph_signature, inductor_cpu_features


def _trace(job: GraphJob) -> torch.export.ExportedProgram:
    with torch.no_grad():
        return torch.export.export(job.module, job.example_inputs, strict=False)


def _signature(job: GraphJob, ep: torch.export.ExportedProgram) -> tuple[list, list, list]:
    inputs = [tensor_spec(n, t) for n, t in zip(job.input_names, job.example_inputs)]
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    user_outputs = ep.graph_signature.user_outputs
    values = [a.meta["val"] for a in out_node.args[0] if getattr(a, "name", None) in user_outputs]
    names = job.output_names or ["tokens" if v.dtype == torch.int64 else "logits" for v in values]
    if len(names) != len(values):
        raise ValueError(f"graph {job.name} returns {len(values)} outputs, but is named {names}")
    outputs = [tensor_spec(n, v) for n, v in zip(names, values)]
    mutated = sorted(set(ep.graph_signature.buffers_to_mutate.values()))
    return inputs, outputs, mutated


def _batch(job: GraphJob) -> int:
    """The batch the CPU kernels pack for: the artifact's slots (decoders), or an encoder graph's rows."""
    return job.static["batch_size"] if "batch_size" in job.static else job.static["rows"]


class TorchAOTBackend(Backend):
    name = "torch-aot"
    compiles_from_shapes = True  # package_constants_in_so=False: the package holds no constant's value

    @property
    def default_target(self) -> str:
        return "cuda" if torch.cuda.is_available() else "cpu"

    def versions(self) -> dict[str, str]:
        return {"compiler_version": f"inductor-{torch.__version__}", "torch_version": torch.__version__}

    def default_flags(self, target: str) -> dict[str, Any]:
        flags: dict[str, Any] = {"aot_inductor.package_constants_in_so": False}
        if target == "cpu":
            # Decode-sized elementwise kernels are tiny: an OpenMP barrier per kernel costs more than
            # the work, and on a busy 2-core host it made the graph 4x slower than eager (measured).
            # Matmuls still run multi-threaded inside aten/MKL.
            flags["cpp.threads"] = 1
        return flags

    def choose_kernels(self, target: str, dtype: str, *, prepack_weights: bool | None,
                       prefill_upcast: bool | None, gemv16: bool | None = None) -> KernelChoice:
        if target != "cpu":  # the CUDA path compiles the model as it is (Inductor picks its GEMMs)
            return super().choose_kernels(target, dtype, prepack_weights=prepack_weights, prefill_upcast=prefill_upcast,
                                          gemv16=gemv16)
        return cpu_kernels.choose(dtype, prepack_weights, prefill_upcast, gemv16)

    def derived_constants(self, job: GraphJob, target: str) -> dict[str, dict[str, Any]]:
        if target != "cpu":
            return {}
        return (cpu_kernels.derived_constants(job.module, job.kernels, job.role, _batch(job))
                | cpu_quant.derived(job.module))

    def compile(self, job: GraphJob, out_file: Path, target: str) -> CompiledGraph:
        if target not in ("cpu", "cuda"):
            raise ValueError(f"backend '{self.name}' compiles for target cpu or cuda, not '{target}'")
        device = torch.device(target)
        module = job.module.to(device)
        kernels = job.kernels if target == "cpu" else KernelChoice()  # (CPU kernels: cpu_kernels.py)
        with cpu_kernels.applied(module, kernels, job.role, _batch(job)) as derived, \
                cpu_quant.applied(module) as quant_derived:  # (quantized exports are target cpu only)
            ep = _trace(replace(job, example_inputs=tuple(t.to(device) for t in job.example_inputs)))
        derived = derived | quant_derived
        inputs, outputs, mutated = _signature(job, ep)
        flags = {**self.default_flags(target), **job.flags}
        # The signature is compiled into the package's metadata: the runtime checks the config and every
        # tensor it binds against it (neuron_cache.signature).
        features = inductor_cpu_features() if target == "cpu" else []
        signature = graph_signature(job, ep, inputs, outputs, features)
        flags["aot_inductor.metadata"] = {**flags.get("aot_inductor.metadata", {}), SIGNATURE_KEY: signature.to_json()}
        with cpu_quant.int4_as_fallback(module):
            torch._inductor.aoti_compile_and_package(ep, package_path=str(out_file), inductor_configs=flags)
        module.to("cpu")
        return CompiledGraph(file=out_file, inputs=inputs, outputs=outputs, mutated_state=mutated, derived=derived)



class TorchExportBackend(Backend):
    name = "torch-export"

    @property
    def default_target(self) -> str:
        return "cpu"

    def versions(self) -> dict[str, str]:
        return {"compiler_version": f"torch.export-{torch.__version__}", "torch_version": torch.__version__}

    def compile(self, job: GraphJob, out_file: Path, target: str) -> CompiledGraph:
        ep = _trace(job)
        inputs, outputs, mutated = _signature(job, ep)
        signature = graph_signature(job, ep, inputs, outputs, cpu_features=[])
        torch.export.save(ep, str(out_file), extra_files={SIGNATURE_KEY: signature.to_json()})
        return CompiledGraph(file=out_file, inputs=inputs, outputs=outputs, mutated_state=mutated)


