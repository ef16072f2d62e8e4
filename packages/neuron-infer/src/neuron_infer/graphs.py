"""Load compiled graph files and bind their constants, by backend name. No model code needed.

Each loader returns a callable taking the graph's inputs positionally and returning a list of
outputs. Constants (weights, rope tables, KV cache) are bound by name; graphs of one artifact are
bound to the *same* tensors so that prefill writes the KV cache that decode reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

Graph = Callable[..., list[torch.Tensor]]


def _as_list(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def load_aoti(file: Path, constants: Mapping[str, torch.Tensor]) -> Graph:
    # The C++ package loader directly, not torch._inductor.aoti_load_package: importing torch._inductor
    # pulls in dynamo (~2 s of a ~5 s load-to-first-token budget), and its Python wrapper re-parses the
    # pytree call spec on every call (tens of µs per decode step). Our graphs take and return flat
    # tensor lists, so the spec is not needed. Arguments: package, model name, run_single_threaded,
    # num_runners, device_index (-1: the package's own device).
    loader = torch._C._aoti.AOTIModelPackageLoader(str(file), "model", False, 1, -1)
    names = loader.get_constant_fqns()
    missing = [n for n in names if n not in constants]
    if missing:
        raise KeyError(f"graph {file.name} needs constants the artifact's weights lack: {missing[:5]}")
    # (constants, use_runtime_constant_folding, check_full_update, user_managed, allow_h2d_copy):
    # user_managed binds our tensors by pointer, so every graph shares one KV cache and one weight copy.
    loader.load_constants({n: constants[n] for n in names}, False, True, True, False)
    return lambda *args: loader.run(list(args))


def load_exported(file: Path, constants: Mapping[str, torch.Tensor]) -> Graph:
    module = torch.export.load(str(file)).module()
    names = [n for n, _ in module.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in module.named_buffers(remove_duplicate=False)]
    for name in names:
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if attr in owner._parameters:
            owner._parameters[attr] = torch.nn.Parameter(constants[name], requires_grad=False)
        else:
            owner._buffers[attr] = constants[name]
    return lambda *args: _as_list(module(*args))


LOADERS: dict[str, Callable[[Path, Mapping[str, torch.Tensor]], Graph]] = {
    "torch-aot": load_aoti,
    "torch-export": load_exported,
}


def load_graph(backend: str, file: Path, constants: Mapping[str, torch.Tensor]) -> Graph:
    try:
        loader = LOADERS[backend]
    except KeyError:
        hint = " Neuron graphs run only on Trainium/Inferentia with the Neuron SDK." if backend == "neuron" else ""
        raise RuntimeError(
            f"this neuron-infer cannot run graphs of backend '{backend}' (it runs: {', '.join(LOADERS)}).{hint}"
        ) from None
    with torch.no_grad():
        return loader(file, constants)
