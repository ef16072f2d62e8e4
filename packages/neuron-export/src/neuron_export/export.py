"""Export a Hugging Face causal LM to an artifact: compiled graphs, converted weights, config.

Steps: resolve the model -> read its config -> pick the architecture -> check the shapes ->
load and convert the checkpoint -> compile one graph per bucket plus token generation -> write
weights, tokenizer and `neuron_config.json` -> validate against transformers' eager model.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import cache, partial
from pathlib import Path
from typing import Any

import torch

from neuron_cache import (
    SCHEMA_VERSION,
    DerivedTensor,
    FileEntry,
    GraphEntry,
    NeuronConfig,
    NeuronConfigError,
    Producer,
    ShardSpec,
    Target,
    TensorSpec,
    WeightsSpec,
    sha256_file,
)
from neuron_cache.artifact import GRAPHS_DIR, WEIGHTS_DIR
from neuron_cache.config import VALIDATION_ATOL as DEFAULT_ATOL
from neuron_cache.signature import STATIC_FIELDS
from neuron_cache.store import CompileCache, graph_cache_key
from neuron_cache.trust import record_trusted
from neuron_export.__about__ import __version__
from neuron_export.backends import GraphJob, KernelChoice, check_target, cpu_kernels, get_backend
from neuron_export.compile_worker import CompileRequest, WorkerPool, compile_graph, run_jobs, skeleton
from neuron_export.convert import rank_weights, sharding_plan, tied_aliases
from neuron_export.encoder_export import ENCODER_COPIED, export_encoder, plan_encoder, wants_encoder
from neuron_export.errors import ExportError, ShapeError, UnsupportedArchitectureError
from neuron_export.models import family_for, supported_model_types
from neuron_export.models.build import bind_checkpoint, build_decoder
from neuron_export.models.parallel import rank_arch
from neuron_export.models.spec import StaticShapes
from neuron_export.output import OutputPlan
from neuron_export.quantize import (
    check_options,
    compute_dtype,
    dequantized_hf_weights,
    graph_fields,
    quantize_model,
    reference_model,
)
from neuron_export.source import load_config, load_gguf_model, load_state_dict, load_tokenizer, resolve

Log = Callable[[str], None]
_COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
           "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja")


@dataclass(kw_only=True, slots=True)
class ExportOptions:
    model: str
    output: str
    task: str = "auto"
    batch_size: int = 1
    sequence_length: int = 512
    max_context_length: int | None = None
    context_buckets: list[int] | None = None
    decode_batches: list[int] | None = None  # None: [1] when batch_size > 1 (see StaticShapes.decode_batches)
    kv_buckets: list[int] | None = None  # None: default_kv_buckets(sequence_length); [] for none (StaticShapes.kv_buckets)
    chunk_buckets: list[int] | None = None  # None: default_chunk_buckets(context buckets); [] for none
    tensor_parallel_size: int = 1
    expert_parallel_size: int = 1  # mixture of experts: groups of ranks holding whole experts (models/moe.py)
    torch_dtype: str = "auto"
    on_device_sampling: bool = False
    max_topk: int = 256
    backend: str = "torch-aot"
    target: str | None = None
    atol: float | None = None
    disable_validation: bool = False
    trust_remote_code: bool = False
    disable_neuron_cache: bool = False
    cache_url: str | None = None
    revision: str | None = None
    prepack_weights: bool | None = None  # None: the backend decides (torch-aot, cpu: on for float32 with oneDNN)
    prefill_upcast: bool | None = None  # None: the backend decides (torch-aot, cpu: on when no native 16-bit GEMMs)
    gemv16: bool | None = None  # None: the backend decides (torch-aot, cpu: on where neuron::linear_16bit pays)
    compile_workers: int | None = None  # None: one worker process per core (compile_worker.py); 0: in this process
    quantize: str | None = None  # "int8" | "int4": weight-only quantization of the linears (quantize.py)
    quant_group_size: int = 32  # int4: input channels per (scale, zero)
    batch_buckets: list[int] | None = None  # encoders: the graphs' batch rows; None: [1, batch_size]
    pooling: str | None = None  # encoders, feature-extraction: pooling mode (None: the checkpoint's, if any)
    flags: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.atol is not None and not (math.isfinite(self.atol) and self.atol >= 0):
            raise ExportError(f"atol = {self.atol}: the validation tolerance must be a finite number >= 0, e.g. 0.001 "
                              "(or None for the dtype's default)")

    @classmethod
    def from_cli(cls, options: dict[str, Any]) -> ExportOptions:
        return cls(**{k: v for k, v in options.items() if k in cls.__dataclass_fields__})


@dataclass(kw_only=True, slots=True)
class ExportResult:
    output: Path
    config: NeuronConfig
    seconds: float
    compile_seconds: dict[str, float]
    validation_max_diff: float | None
    cache_stats: dict[str, int] = field(default_factory=dict)


def default_buckets(max_context_length: int, smallest: int = 64) -> list[int]:
    """Powers of two from `smallest` up to, and ending at, max_context_length. NxDI starts at 128; on CPU prefill
    costs what its padded bucket costs, and a chat turn (SmolLM2's template + question: ~40 tokens) fits 64,
    so the smaller first bucket halves its prompt-to-first-token for one more graph (compiled in parallel)."""
    return [*_doubling(smallest, max_context_length), max_context_length]


def _doubling(smallest: int, limit: int) -> list[int]:
    """smallest, 2 * smallest, ... below limit."""
    values, b = [], smallest
    while b < limit:
        values.append(b)
        b *= 2
    return values


KV_BUCKET_SMALLEST = 512


def default_kv_buckets(sequence_length: int, smallest: int = KV_BUCKET_SMALLEST) -> list[int]:
    """Token-generation KV buckets below sequence_length, doubling from `smallest`: a 4096-token cache
    decodes a short context in the 512 graph. Below 512 positions the cache read is a few percent of a
    step (SmolLM2: 12 MB of KV in 16-bit vs 270 MB of weights), not worth another compiled graph."""
    return _doubling(smallest, sequence_length)


CHUNK_BUCKET_LARGEST = 256


def default_chunk_buckets(context_buckets: list[int], largest: int = CHUNK_BUCKET_LARGEST) -> list[int]:
    """Two chunked-prefill graphs: the largest prompt bucket up to `largest` for the bulk of a long prompt, and the
    smallest one for a short tail (the new turn after a reused prefix). A chunk attends over the whole cache and
    its cost grows with its length: larger chunks gain little once the GEMMs are compute-bound."""
    fitting = [b for b in context_buckets if b <= largest] or context_buckets[:1]
    return sorted({fitting[0], fitting[-1]})


def export(options: ExportOptions, log: Log = print) -> ExportResult:
    """Build the artifact in a staging directory next to OUTPUT, validate it there, then move it into place:
    a failed export leaves OUTPUT as it was (see output.py)."""
    start = time.perf_counter()
    source = resolve(options.model, options.revision)
    hf_config = load_config(source, options.trust_remote_code)
    if not source.is_gguf and wants_encoder(options.task, hf_config, source.directory):
        plan = plan_encoder(options, source, hf_config)
        output = OutputPlan.check(options.output, source.directory, ENCODER_COPIED)
        return export_encoder(options, plan, output, log)
    if options.batch_buckets or options.pooling:
        raise ExportError("--batch_buckets and --pooling apply to encoder exports (feature-extraction, fill-mask, "
                          "classification, question-answering); a text-generation export has slots, not batch buckets")
    output = OutputPlan.check(options.output, None if source.is_gguf else source.directory, _COPIED)
    task = _task(options.task, hf_config)
    family = family_for(hf_config.model_type)
    dtype = compute_dtype(options.quantize, options.torch_dtype, _dtype(options.torch_dtype, hf_config, source.is_gguf))
    backend = get_backend(options.backend)
    target = options.target or backend.default_target
    check_target(backend, target)
    check_options(options.quantize, options.quant_group_size, backend.name, target, options.tensor_parallel_size)
    if options.quantize and family.arch(hf_config).num_experts:
        raise ExportError(f"--quantize {options.quantize}: {hf_config.model_type} has routed experts, which the "
                          "quantizer does not cover (it would quantize only the router); drop --quantize")
    shapes = _shapes(options, hf_config, dtype)
    kernels = backend.choose_kernels(target, dtype, prepack_weights=options.prepack_weights,
                                     prefill_upcast=options.prefill_upcast, gemv16=options.gemv16)
    cache = CompileCache.from_env(options.cache_url, enabled=not options.disable_neuron_cache)
    log(f"Exporting {options.model} ({hf_config.model_type}, {family.__name__}) for {task}: batch {shapes.batch_size}, "
        f"sequence {shapes.sequence_length}, buckets {shapes.context_buckets}, {dtype}, backend {backend.name}/{target}")
    if output.replaces:
        log(f"Warning: {options.output} holds an artifact exported earlier; it is replaced once the new one "
            "validates (its own files only: those its neuron_config.json lists, config and tokenizer files)")

    with output.staged() as out:
        (out / GRAPHS_DIR).mkdir()
        (out / WEIGHTS_DIR).mkdir()
        compile_graphs = partial(_compile_graphs, hf_config=hf_config, shapes=shapes, kernels=kernels, backend=backend,
                                 target=target, options=options, out=out, log=log, cache=cache)
        workers = _compile_workers(options, backend, len(_graph_list(shapes)))
        if workers:
            # Graphs compile from the model's shapes in worker processes while the checkpoint loads here.
            pool = WorkerPool(workers)
            try:
                with ThreadPoolExecutor(1, thread_name_prefix="neuron-export-compile") as runner:
                    compiled = runner.submit(compile_graphs, skeleton(hf_config, shapes), pool=pool)
                    try:
                        model, tensors, plan, hf_state, hf_model, quantization = _load_checkpoint(source, hf_config, shapes,
                                                                                           options, log)
                    except BaseException:
                        pool.stop()
                        raise
                    graphs, derived, compile_seconds = compiled.result()
            finally:
                pool.stop()
                pool.close()
        else:
            model, tensors, plan, hf_state, hf_model, quantization = _load_checkpoint(source, hf_config, shapes,
                                                                                           options, log)
            graphs, derived, compile_seconds = compile_graphs(model)

        weight_files = _write_weights(model, tensors, plan, out)
        _copy_checkpoint_files(source, hf_config, out)
        config = NeuronConfig(
            schema_version=SCHEMA_VERSION,
            producer=Producer(package="neuron-export", version=__version__),
            task=task,
            model_type=hf_config.model_type,
            architecture=(hf_config.architectures or [f"{family.__name__}ForCausalLM"])[0],
            checkpoint_id=options.model,
            checkpoint_revision=source.revision,
            batch_size=shapes.batch_size,
            max_batch_size=shapes.batch_size,
            continuous_batching=shapes.batch_size > 1,
            sequence_length=shapes.sequence_length,
            max_context_length=shapes.max_context_length,
            context_buckets=shapes.context_buckets,
            chunk_buckets=shapes.chunk_buckets,
            tensor_parallel_size=options.tensor_parallel_size,
            expert_parallel_size=shapes.expert_parallel_size,
            torch_dtype=dtype,
            on_device_sampling=shapes.on_device_sampling,
            max_topk=shapes.max_topk,
            quantization=quantization,
            target=Target(backend=backend.name, device=target, **backend.versions()),
            graphs=graphs,
            weights=WeightsSpec(
                files=[FileEntry(path=f, sha256=sha256_file(out / f), rank=rank) for f, rank in weight_files],
                sharding={k: ShardSpec(**v) for k, v in plan.items()},
                aliases=tied_aliases(model),
                derived={k: DerivedTensor(**v) for k, v in derived.items()},
            ),
            state=[TensorSpec(name=n, shape=list(b.shape), dtype=str(b.dtype).removeprefix("torch."))
                   for n, b in model.named_buffers() if n in set(model.state_names())],
            metadata={"eos_token_id": getattr(hf_config, "eos_token_id", None),
                      "cpu_isa": torch.backends.cpu.get_cpu_capability() if target == "cpu" else None,
                      "prefill_matmul_dtype": "float32" if kernels.prefill_upcast else dtype,
                      "kernels": cpu_kernels.kernel_records(kernels, dtype)},
        )
        config.save(out)

        max_diff = None
        if not options.disable_validation:
            from neuron_export.validate import validate_with_neuron_infer

            atol = options.atol if options.atol is not None else DEFAULT_ATOL[dtype]
            if quantization is not None:  # the reference multiplies by the weights the kernels use
                hf_model = reference_model(hf_config, hf_state, hf_model, dequantized_hf_weights(model, family, hf_state))
            max_diff = validate_with_neuron_infer(out, hf_config, hf_state, hf_model, dtype, atol, log,
                                                  options.output, options.model)
        if not options.disable_neuron_cache:
            cache.register_export(options.model, config.to_dict())
    output.install(out)  # the last step: OUTPUT changes only now, and only to a validated artifact
    seconds = time.perf_counter() - start
    log(f"Artifact written to {options.output} in {seconds:.1f} s")
    return ExportResult(output=Path(options.output), config=config, seconds=seconds, compile_seconds=compile_seconds,
                        validation_max_diff=max_diff, cache_stats=cache.stats.as_dict())


def _load_checkpoint(source, hf_config, shapes: StaticShapes, options: ExportOptions, log: Log):
    """The model holding the converted (and, with --quantize, quantized) checkpoint (rank 0's share with tensor
    parallelism), every tensor the graphs bind, the sharding plan, transformers' state (and model, for a GGUF)
    for validation, and the quantization record."""
    t = time.perf_counter()
    hf_model = load_gguf_model(source) if source.is_gguf else None
    hf_state = hf_model.state_dict() if hf_model is not None else load_state_dict(source)
    # The checkpoint converts into the whole model; with tensor parallelism the graphs are traced on rank 0's
    # share of it (each rank's share goes into its own weights file).
    family_, full = build_decoder(hf_config, replace(shapes, tensor_parallel_size=1, expert_parallel_size=1))
    weights = bind_checkpoint(family_, full, hf_state)
    quantization = None if options.quantize is None else quantize_model(
        full, family_, options.quantize, options.quant_group_size, hf_config=hf_config, log=log,
        gguf_file=source.directory / source.gguf_file if source.is_gguf else None)
    plan = sharding_plan(family_, full)
    tensors = _bound_tensors(full)
    model = full if shapes.tensor_parallel_size == 1 else _rank_model(hf_config, shapes, tensors, plan)
    log(f"Loaded and converted {len(weights)} tensors in {time.perf_counter() - t:.1f} s")
    return model, tensors, plan, hf_state, hf_model, quantization


def _compile_workers(options: ExportOptions, backend, jobs: int) -> int:
    """How many worker processes compile graphs (0: this process, after the checkpoint loads)."""
    if options.compile_workers is not None and options.compile_workers < 0:
        raise ExportError(f"compile_workers = {options.compile_workers}: give 0 (compile in this process) or a "
                          "positive number of worker processes (None: one per core)")
    if not backend.compiles_from_shapes:  # its graph files carry the weights: compiled here, from the loaded model
        return 0
    if options.quantize is not None:
        # The quantized modules (and the record in each graph's signature) exist once the weights are quantized,
        # which a skeleton built from the config alone does not reproduce (GGUF blocks taken directly or not):
        # quantized graphs compile in this process, from the quantized model.
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    wanted = cores if options.compile_workers is None else options.compile_workers
    if wanted == 0 or (options.compile_workers is None and cores < 2):
        return 0
    return max(1, min(wanted, jobs))


def _graph_list(shapes: StaticShapes) -> list[tuple[str, int | None, int | None]]:
    """(role, bucket, rows) of every graph: a graph per prompt bucket, token generation for every row count
    (all slots, then each sub-batch) and every KV bucket (then the whole cache), and a graph per chunk length."""
    return ([("context_encoding", b, None) for b in shapes.context_buckets]
            + [("token_generation", kv, rows) for rows in [None, *shapes.decode_batches]
               for kv in [*shapes.kv_buckets, None]]
            + [("chunked_prefill", c, None) for c in shapes.chunk_buckets])


def _compile_graphs(model, *, hf_config, shapes: StaticShapes, kernels: KernelChoice, backend, target: str,
                    options: ExportOptions, out: Path, log: Log, cache, pool: WorkerPool | None = None):
    """Every graph of `_graph_list`, each through the compile cache: in `pool`'s worker processes (several at
    once, `model` is then a skeleton), else one after another here.

    Returns the graph entries, the constants the graphs bind that the runtime derives at load
    (`weights.derived`, the backend's kernels' doing), and the seconds each graph took."""
    jobs = _graph_list(shapes)
    graphs: dict[str, GraphEntry] = {}
    derived: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    backend_id = {"name": backend.name, "target": target, "package_version": __version__,
                  "graph_code": graph_code_digest(), **backend.versions()}
    if target == "cpu":
        # Inductor emits code for this CPU's vector ISA: an AVX512 graph must never reach an AVX2 machine
        # through a shared cache.
        backend_id["cpu_isa"] = torch.backends.cpu.get_cpu_capability()
    flags = {**backend.default_flags(target), **options.flags}
    trust_lock = threading.Lock()  # the trust store is one file, written by each graph's thread

    def one(i: int, role: str, bucket: int | None, rows: int | None) -> tuple[str, GraphEntry, dict, float]:
        name = role if bucket is None else f"{role}_{'kv' if role == 'token_generation' else ''}{bucket}"
        name = name if rows is None else f"{name}_rows{rows}"
        prompt_bucket = None if role == "token_generation" else bucket  # token generation's is the KV length
        static = {**{k: v for k, v in _graph_shape_fields(shapes).items() if k in STATIC_FIELDS},
                  "rows": rows, "vocab_size": model.arch.vocab_size, **graph_fields(model)}
        request = CompileRequest(hf_config=hf_config, shapes=shapes, name=name, role=role, bucket=bucket, rows=rows,
                                 kernels=kernels, flags=dict(options.flags), static=static, backend=backend.name,
                                 target=target)
        signature = model.signature(role, prompt_bucket, rows)
        # The kernel choice is part of the key: a graph compiled with packing never serves an export without it.
        shape_fields = (_graph_shape_fields(shapes) | asdict(kernels)
                        | ({"decode_rows": rows} if rows is not None else {})
                        | (graph_fields(model) if getattr(model, "quantization", None) else {}))
        key = graph_cache_key(model_config=asdict(model.arch), shape_fields=shape_fields, role=role,
                              bucket=bucket, backend=backend_id, flags=flags)
        filename = f"{name}{backend.file_extension}"
        t = time.perf_counter()
        # Known without compiling (cached graphs need it too); the job is only read, never traced.
        probe = GraphJob(name=name, role=role, bucket=bucket, module=model,
                         example_inputs=model.example_inputs(role, prompt_bucket, rows),
                         input_names=model.input_names(role, rows), static=static, kernels=kernels)
        graph_derived = backend.derived_constants(probe, target)
        compiled_here = []

        def compile_fn(path: Path) -> None:
            compiled_here.append(True)
            started = lambda: log(f"[{i}/{len(jobs)}] compiling {name} ...")  # noqa: E731
            if pool is not None:
                outputs, got_derived = pool.run(replace(request, output=str(path)), started)
            else:
                started()
                compiled = compile_graph(model, replace(request, output=str(path)))
                outputs, got_derived = compiled.outputs, compiled.derived
            if outputs != signature["outputs"]:
                raise ExportError(f"backend {backend.name} produced outputs {outputs} for {name}, "
                                  f"expected {signature['outputs']}")
            if got_derived != graph_derived:
                raise ExportError(f"backend {backend.name} compiled {name} with derived constants "
                                  f"{sorted(got_derived)}, but announced {sorted(graph_derived)}; report a bug")

        cached = cache.get_or_compile(key, compile_fn, filename=filename, meta={"graph": name, **signature})
        rel, digest = install_graph(cached, out, filename, f"{name} of {options.model}", trust_lock)
        took = time.perf_counter() - t
        how = "compiled" if compiled_here else "from the compile cache"
        log(f"[{i}/{len(jobs)}] {name}: {how} in {took:.1f} s")
        entry = GraphEntry(
            file=rel, sha256=digest, role=role, bucket=bucket, rows=rows,
            inputs=[TensorSpec(**s) for s in signature["inputs"]],
            outputs=[TensorSpec(**s) for s in signature["outputs"]],
            mutated_state=model.state_names(),
        )
        return name, entry, graph_derived, took

    results = run_jobs(one, [(i, *job) for i, job in enumerate(jobs, 1)], pool)
    for name, entry, graph_derived, took in results:  # in job order, whichever finished first
        graphs[name] = entry
        derived.update(graph_derived)
        seconds[name] = took
    return graphs, derived, seconds


def install_graph(cached: Path, out: Path, filename: str, what: str, lock: threading.Lock) -> tuple[str, str]:
    """Copy a compiled (or cached) graph into the artifact; returns its relative path and sha256. This machine
    produced the graph (compiled it, or took it from the compile cache it was pointed at): its digest is recorded
    so the artifact loads here without a trust_remote_code consent."""
    rel = f"{GRAPHS_DIR}/{filename}"
    shutil.copyfile(cached, out / rel)
    digest = sha256_file(out / rel)
    with lock:  # the trust store is one file, written by each graph's thread
        record_trusted(digest, origin=f"neuron-export {__version__}: {what}")
    return rel, digest


GRAPH_CODE_DIRS = ("models", "backends")


def graph_code_digest(root: Path | None = None) -> str:
    """sha256 over the source of the code that builds and compiles graphs (models/, backends/).

    Part of every graph's cache key: the package version alone misses edits between releases (an
    editable install, a patched wheel), and a graph cached by older code can call ops the new runtime
    binds differently (a decode graph on MKL-packed weights handed oneDNN-packed ones, say).
    """
    return _digest(root or Path(__file__).parent)


@cache
def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for sub in GRAPH_CODE_DIRS:
        for file in sorted((root / sub).rglob("*.py")):
            h.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return h.hexdigest()


def _graph_shape_fields(shapes: StaticShapes) -> dict[str, Any]:
    """The neuron-config fields a single graph depends on. The bucket list is not one of them: the
    graph for bucket 128 is the same whichever other buckets an export asks for."""
    return {"batch_size": shapes.batch_size, "sequence_length": shapes.sequence_length, "torch_dtype": shapes.dtype,
            "on_device_sampling": shapes.on_device_sampling, "max_topk": shapes.max_topk,
            "tensor_parallel_size": shapes.tensor_parallel_size,
            # only when set: the keys of every graph exported before expert parallelism existed stay the same
            **({"expert_parallel_size": shapes.expert_parallel_size} if shapes.expert_parallel_size != 1 else {})}


def _bound_tensors(model) -> dict[str, torch.Tensor]:
    """Every constant the graphs bind except the KV cache: parameters (each tensor once) and rope tables."""
    skip = set(model.state_names())  # runtime-allocated (derived constants exist only while a graph is traced)
    tensors = {n: p.detach().contiguous() for n, p in model.named_parameters()}
    tensors.update({n: b.contiguous() for n, b in model.named_buffers() if n not in skip})
    return tensors


def _save(tensors: dict[str, torch.Tensor], out: Path, rel: str) -> str:
    from safetensors.torch import save_file

    save_file(tensors, str(out / rel), metadata={"format": "pt", "producer": f"neuron-export {__version__}"})
    return rel


def _rank_model(hf_config, shapes: StaticShapes, tensors: dict[str, torch.Tensor], plan: dict[str, dict]):
    """Rank 0's share of the model, holding rank 0's weights: the module every rank's graphs are traced from."""
    _, model = build_decoder(hf_config, shapes)
    tp, ep = shapes.tensor_parallel_size, shapes.expert_parallel_size
    model.load_state_dict(rank_weights(tensors, plan, tp, 0, ep) | model.rank_buffers(0), strict=False)
    return model


def _write_weights(model, tensors: dict[str, torch.Tensor], plan: dict[str, dict],
                   out: Path) -> list[tuple[str, int | None]]:
    """The whole model's constants in one file; with tensor parallelism, one file per rank, cut by the sharding
    plan, plus what the model itself knows per rank (its token map)."""
    tp, ep = model.tp, model.shapes.expert_parallel_size
    if tp == 1:
        return [(_save(tensors, out, f"{WEIGHTS_DIR}/model.safetensors"), None)]
    return [(_save(rank_weights(tensors, plan, tp, rank, ep) | model.rank_buffers(rank), out,
                   f"{WEIGHTS_DIR}/rank{rank}.safetensors"), rank) for rank in range(tp)]


def _copy_checkpoint_files(source, hf_config, out: Path) -> None:
    if source.is_gguf:
        tokenizer = load_tokenizer(source)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
        hf_config.save_pretrained(out)
        _save_generation_config(hf_config, out)
        return
    for name in _COPIED:
        if (source.directory / name).is_file():
            shutil.copy2(source.directory / name, out / name)
    if not (out / "generation_config.json").is_file():
        _save_generation_config(hf_config, out)


def _save_generation_config(hf_config, out: Path) -> None:
    from transformers import GenerationConfig

    GenerationConfig.from_model_config(hf_config).save_pretrained(out)


def _task(task: str, hf_config) -> str:
    if task not in ("auto", "text-generation"):
        raise ExportError(f"--task {task!r} is not a task neuron-export knows; supported: text-generation, "
                          "feature-extraction (sentence-similarity), fill-mask, text-classification, "
                          "token-classification, question-answering (or auto)")
    archs = hf_config.architectures or []
    if task == "auto" and archs and not any(a.endswith("ForCausalLM") for a in archs):
        raise UnsupportedArchitectureError(
            f"architecture {archs[0]} is not supported for text generation; neuron-export supports causal LMs of model types "
            f"{', '.join(supported_model_types())}"
        )
    return "text-generation"


def _dtype(requested: str, hf_config, is_gguf: bool) -> str:
    if requested != "auto":
        return requested
    if is_gguf:
        return "float32"  # GGUF tensors are dequantized to float32 by transformers
    dtype = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None) or torch.float32
    name = str(dtype).removeprefix("torch.")
    return name if name in DEFAULT_ATOL else "float32"


def _shapes(options: ExportOptions, hf_config, dtype: str) -> StaticShapes:
    max_ctx = options.max_context_length or options.sequence_length
    buckets = options.context_buckets or default_buckets(max_ctx)
    if options.max_context_length is None and options.context_buckets:
        max_ctx = buckets[-1]
    max_pos = getattr(hf_config, "max_position_embeddings", None)
    if max_pos is not None and options.sequence_length > max_pos:
        raise ShapeError(
            f"--sequence_length {options.sequence_length} exceeds the model's max_position_embeddings ({max_pos}); "
            f"use --sequence_length <= {max_pos}"
        )
    tp, ep = options.tensor_parallel_size, options.expert_parallel_size
    if tp != 1 or ep != 1:
        try:
            rank_arch(family_for(hf_config.model_type).arch(hf_config), tp, ep)
        except ValueError as err:
            given = f"--tensor_parallel_size {tp}" + (f" --expert_parallel_size {ep}" if ep != 1 else "")
            raise ShapeError(f"{given}: {err}") from None
    # The artifact contract owns the shape rules; reuse them to report impossible shapes early.
    chunk_buckets = default_chunk_buckets(buckets) if options.chunk_buckets is None else list(options.chunk_buckets)
    probe = {"batch_size": options.batch_size, "max_batch_size": options.batch_size,
             "sequence_length": options.sequence_length, "max_context_length": max_ctx, "context_buckets": buckets,
             "chunk_buckets": chunk_buckets}
    try:
        NeuronConfig.validate_shapes(**probe)
    except NeuronConfigError as err:
        raise ShapeError(str(err).replace("neuron_config field", "option")) from None
    decode_batches = options.decode_batches
    if decode_batches is None:
        decode_batches = [1] if options.batch_size > 1 else []
    bad = [n for n in decode_batches if not 1 <= n < options.batch_size]
    if bad or sorted(set(decode_batches)) != list(decode_batches):
        raise ShapeError(
            f"--decode_batches {','.join(map(str, decode_batches))}: each must be between 1 and batch_size - 1 "
            f"({options.batch_size - 1}), increasing and unique (the full batch always has its graph)"
        )
    kv_buckets = options.kv_buckets
    if kv_buckets is None:
        kv_buckets = default_kv_buckets(options.sequence_length)
    kv_buckets = [b for b in kv_buckets if b != options.sequence_length]  # that graph always exists
    bad = [b for b in kv_buckets if not 1 <= b < options.sequence_length]
    if bad or sorted(set(kv_buckets)) != list(kv_buckets):
        raise ShapeError(
            f"--kv_buckets {','.join(map(str, options.kv_buckets or []))}: each must be between 1 and sequence_length "
            f"({options.sequence_length}), increasing and unique (the whole cache always has its graph)"
        )
    return StaticShapes(batch_size=options.batch_size, sequence_length=options.sequence_length,
                        decode_batches=list(decode_batches), kv_buckets=kv_buckets, chunk_buckets=chunk_buckets,
                        context_buckets=buckets, dtype=dtype, on_device_sampling=options.on_device_sampling,
                        max_topk=options.max_topk, tensor_parallel_size=tp, expert_parallel_size=ep)
