"""Load compiled graph files and bind their constants, by backend name. No model code needed.

Each loaded graph is called with its inputs by name and returns its outputs by name. Constants
(weights, rope tables, KV cache) are bound by name; graphs of one artifact are bound to the *same*
tensors so that prefill writes the KV cache that decode reads.

Constants are bound by pointer: compiled code trusts that every tensor has the shape and dtype it was
compiled for, and a wrong one means out-of-bounds reads and writes, not an error. So before binding,
every constant and, on every call, every input is checked against the signature the backend wrote
into the graph file itself (`neuron_cache.signature`), never against the editable neuron_config.json.
Callers must have checked that the graph files are trusted (`neuron_cache.trust`) first: reading a
torch-export signature unpickles the program, and a torch-aot package runs code when it is opened.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import torch

from neuron_cache.signature import SIGNATURE_KEY, GraphSignature, SignatureError


class Graph:
    """A loaded graph, called by input name: `graph(input_ids=..., positions=...)` -> {output name: tensor}.

    The names, their order and their shapes are the graph's own signature (written by the model that
    produced it); this class is the only code that turns named inputs into the positional call the
    compiled code takes.
    """

    def __init__(self, run: Callable[[list[torch.Tensor]], list[torch.Tensor]], signature: GraphSignature,
                 where: str, keep_alive: Any = None):
        self._run = run
        self.signature = signature
        self._where = where
        self._keep_alive = keep_alive
        self._expected = [(t.name, tuple(t.shape), _dtype(t.dtype, where)) for t in signature.inputs]
        self.input_names = [t.name for t in signature.inputs]
        self.output_names = [t.name for t in signature.outputs]

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        missing = [n for n in self.input_names if n not in inputs]
        unknown = sorted(set(inputs) - set(self.input_names))
        if missing or unknown:
            problems = [f"missing {', '.join(missing)}"] * bool(missing) + [f"unknown {', '.join(unknown)}"] * bool(unknown)
            raise SignatureError(f"{self._where} takes the inputs ({', '.join(self.input_names)}): "
                                 f"{'; '.join(problems)}")
        # A few tuple comparisons per call (~µs against a decode step's milliseconds): the only thing
        # between a wrong-shaped input and the compiled kernel's unchecked indexing.
        args = []
        for name, shape, dtype in self._expected:
            arg = inputs[name]
            if tuple(arg.shape) != shape or arg.dtype != dtype:
                raise SignatureError(f"{self._where}: input '{name}' must be {list(shape)} {dtype}, got "
                                     f"{list(arg.shape)} {arg.dtype}")
            args.append(arg)
        outputs = self._run(args)
        if len(outputs) != len(self.output_names):
            raise SignatureError(f"{self._where} returned {len(outputs)} outputs; its signature lists "
                                 f"{self.output_names}. Re-export the model")
        return dict(zip(self.output_names, outputs))


def _dtype(name: str, where: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise SignatureError(f"{where}: unknown dtype {name!r} in the graph's signature; re-export the model")
    return dtype


def check_constants(signature: GraphSignature, constants: Mapping[str, torch.Tensor], where: str) -> None:
    """Every constant the graph was compiled with must be bound, with that exact shape and dtype."""
    for name, spec in signature.constants.items():
        tensor = constants.get(name)
        if tensor is None:
            raise SignatureError(f"{where} needs the constant '{name}' ({spec.shape} {spec.dtype}), which the "
                                 "artifact's weights and state do not provide; re-export the model")
        found = (list(tensor.shape), str(tensor.dtype).removeprefix("torch."))
        if found != (list(spec.shape), spec.dtype):
            raise SignatureError(f"{where} was compiled with '{name}' as {list(spec.shape)} {spec.dtype}, but the "
                                 f"artifact provides {found[0]} {found[1]}; its weights or neuron_config.json do not "
                                 "belong to this graph. Re-export the model.")


# ---- the host CPU ----------------------------------------------------------------------------------
@cache
def host_cpu_features() -> frozenset[str] | None:
    """The CPU flags Linux reports for this machine, or None where /proc/cpuinfo does not exist."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def check_cpu_features(signature: GraphSignature, where: str) -> None:
    host = host_cpu_features()
    if host is None or not signature.cpu_features:
        return
    missing = sorted(set(signature.cpu_features) - host)
    if missing:
        raise RuntimeError(
            f"{where} was compiled for a CPU with {', '.join(missing)}, which this machine lacks: its native code "
            "would stop on an illegal instruction. Re-export the model on this machine (or one like it)."
        )


# ---- loaders, by backend ---------------------------------------------------------------------------
def _signature_from(meta: Mapping[str, str], where: str) -> GraphSignature:
    if SIGNATURE_KEY not in meta:
        raise SignatureError(f"{where} carries no signature of what it was compiled for (built by an older "
                             "neuron-export), so its inputs and constants cannot be checked; re-export the model")
    return GraphSignature.from_json(meta[SIGNATURE_KEY], where)


# AOTInductor extracts a package into a fresh directory under $TMPDIR and deletes it only when the loader
# object is destroyed, so a failed load left /tmp/aotinductor_* behind. Each load gets a private $TMPDIR
# that this module created and removes itself. TMPDIR is process-wide: loads are serialized.
_TMPDIR_LOCK = threading.Lock()


def _aoti_package_loader(file: Path) -> tuple[Any, str]:
    private = tempfile.mkdtemp(prefix="neuron-infer-aoti-")
    with _TMPDIR_LOCK:
        before = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = private
        try:
            # Arguments: package, model name, run_single_threaded, num_runners, device_index (-1: its own).
            return torch._C._aoti.AOTIModelPackageLoader(str(file), "model", False, 1, -1), private
        except BaseException:
            shutil.rmtree(private, ignore_errors=True)
            raise
        finally:
            if before is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = before


def load_aoti(file: Path, constants: Mapping[str, torch.Tensor], where: str) -> Graph:
    # The C++ package loader directly, not torch._inductor.aoti_load_package: importing torch._inductor
    # pulls in dynamo (~2 s of a ~5 s load-to-first-token budget), and its Python wrapper re-parses the
    # pytree call spec on every call (tens of µs per decode step). Our graphs take and return flat
    # tensor lists, so the spec is not needed.
    # The signature is read from the package before its shared library is opened.
    signature = _signature_from(torch._C._aoti.AOTIModelPackageLoader.load_metadata_from_package(str(file), "model"),
                                where)
    check_cpu_features(signature, where)
    check_constants(signature, constants, where)
    loader, private = _aoti_package_loader(file)
    try:
        names = loader.get_constant_fqns()
        unknown = [n for n in names if n not in signature.constants]
        if unknown:
            raise SignatureError(f"{where} binds constants its signature does not list ({unknown[:5]}); re-export")
        # (constants, use_runtime_constant_folding, check_full_update, user_managed, allow_h2d_copy):
        # user_managed binds our tensors by pointer, so every graph shares one KV cache and one weight copy.
        loader.load_constants({n: constants[n] for n in names}, False, True, True, False)
    except BaseException:
        del loader
        shutil.rmtree(private, ignore_errors=True)
        raise
    graph = Graph(loader.run, signature, where, keep_alive=loader)
    weakref.finalize(graph, shutil.rmtree, private, True)
    return graph


def load_exported(file: Path, constants: Mapping[str, torch.Tensor], where: str) -> Graph:
    extra = {SIGNATURE_KEY: ""}
    program = torch.export.load(str(file), extra_files=extra)
    signature = _signature_from({k: v for k, v in extra.items() if v}, where)  # an absent extra file stays ""
    check_constants(signature, constants, where)
    module = program.module()
    names = [n for n, _ in module.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in module.named_buffers(remove_duplicate=False)]
    for name in names:
        if name not in signature.constants:
            raise SignatureError(f"{where} holds a constant its signature does not list ({name}); re-export")
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if attr in owner._parameters:
            owner._parameters[attr] = torch.nn.Parameter(constants[name], requires_grad=False)
        else:
            owner._buffers[attr] = constants[name]
    return Graph(lambda args: _as_list(module(*args)), signature, where)


def _as_list(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


Loader = Callable[[Path, Mapping[str, torch.Tensor], str], Graph]
LOADERS: dict[str, Loader] = {
    "torch-aot": load_aoti,
    "torch-export": load_exported,
}
# An out-of-tree backend adds its loader without editing neuron-infer: an entry point in this group, named
# after the backend (`target.backend` in neuron_config.json), pointing at a function with load_aoti's
# signature. It must check the constants against the graph's signature (`check_constants`) and return a
# `Graph`, whose calls check every input; the trust check has already run on the file it is given.
ENTRY_POINT_GROUP = "neuron_infer.backends"


def plugin_loaders() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in LOADERS}


def loader_for(backend: str) -> Loader:
    if backend in LOADERS:
        return LOADERS[backend]
    plugins = plugin_loaders()
    if backend in plugins:
        return plugins[backend].load()
    hint = " Neuron graphs run only on Trainium/Inferentia with the Neuron SDK." if backend == "neuron" else ""
    raise RuntimeError(
        f"this neuron-infer cannot run graphs of backend '{backend}' (it runs: {', '.join([*LOADERS, *plugins])}; "
        f"a backend package adds itself through the '{ENTRY_POINT_GROUP}' entry point group).{hint}"
    )


def load_graph(backend: str, file: Path, constants: Mapping[str, torch.Tensor], where: str | None = None) -> Graph:
    loader = loader_for(backend)
    with torch.no_grad():
        return loader(file, constants, where or str(file))
