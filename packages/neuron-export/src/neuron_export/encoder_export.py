"""Export an encoder checkpoint (BERT family; or a decoder as an embedder) to an artifact of encoder graphs.

The same contract, compile cache and backends as the decoders (export.py), with graphs of role "encoder": one pass
over a right-padded (rows, sequence) batch, no KV cache, one graph per (batch bucket, sequence bucket) pair. A
sentence-transformers folder exports as feature-extraction with its pooling in the graph (st_folder.py); its
normalization is recorded for the runtime.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from neuron_cache import (
    SCHEMA_VERSION,
    FileEntry,
    GraphEntry,
    NeuronConfig,
    NeuronConfigError,
    Pooling,
    Producer,
    Target,
    TensorSpec,
    WeightsSpec,
    sha256_file,
)
from neuron_cache.artifact import GRAPHS_DIR, WEIGHTS_DIR
from neuron_cache.config import ENCODER_TASKS, POOLING_MODES
from neuron_cache.config import VALIDATION_ATOL as DEFAULT_ATOL
from neuron_cache.store import CompileCache, graph_cache_key
from neuron_export.__about__ import __version__
from neuron_export.backends import check_target, get_backend
from neuron_export.compile_worker import CompileRequest, WorkerPool, compile_graph, run_jobs
from neuron_export.convert import tied_aliases
from neuron_export.errors import ExportError, ShapeError
from neuron_export.models.spec import EncoderShapes
from neuron_export.output import OutputPlan
from neuron_export.source import ModelSource, load_config, load_state_dict
from neuron_export.st_folder import SentenceTransformerInfo, is_sentence_transformers_dir, read_sentence_transformers

ENCODER_COPIED = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                  "vocab.json", "merges.txt", "tokenizer.model", "sentencepiece.bpe.model", "spiece.model",
                  "added_tokens.json", "sentence_bert_config.json", "config_sentence_transformers.json")
TASK_ALIASES = {"sentence-similarity": "feature-extraction", "embedding": "feature-extraction",
                "embed": "feature-extraction", "masked-lm": "fill-mask", "sequence-classification": "text-classification"}
DEFAULT_SMALLEST_BUCKET = 64  # a typical sentence (~10-40 tokens) fits; a passage takes the larger buckets


@dataclass(kw_only=True, slots=True)
class EncoderPlan:
    """What an encoder export builds, decided before anything compiles."""

    source: ModelSource  # the transformer checkpoint (a sentence-transformers folder's Transformer module)
    hf_config: Any  # its config.json
    task: str
    pooling: Pooling | None
    shapes: EncoderShapes
    sentence_transformers: SentenceTransformerInfo | None


def wants_encoder(task: str, hf_config: Any, directory: Path) -> bool:
    """Whether `export()` hands this checkpoint to the encoder path: an encoder task, a sentence-transformers folder,
    or (task auto) a checkpoint saved without a language-model head (BertForMaskedLM, BertModel, and a decoder saved
    as its bare model, as Qwen3-Embedding ships Qwen3Model). Causal LMs stay with the decoder path."""
    task = TASK_ALIASES.get(task, task)
    if task in ENCODER_TASKS:
        return True
    if task != "auto":
        return False
    if is_sentence_transformers_dir(directory):
        return True
    archs = getattr(hf_config, "architectures", None) or []
    return bool(archs) and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def plan_encoder(options, source: ModelSource, hf_config: Any) -> EncoderPlan:
    from neuron_export.models.encoders import encoder_task_for

    st = read_sentence_transformers(source.directory) if is_sentence_transformers_dir(source.directory) else None
    if st is not None and st.checkpoint_dir != source.directory.resolve():
        source = ModelSource(model_id=source.model_id, directory=st.checkpoint_dir, revision=source.revision)
        hf_config = load_config(source, options.trust_remote_code)
    task = TASK_ALIASES.get(options.task, options.task)
    if task == "auto":
        task = "feature-extraction" if st is not None else encoder_task_for(list(hf_config.architectures or []))
    if task not in ENCODER_TASKS:
        raise ExportError(f"--task {options.task!r}: an encoder exports for one of {', '.join(ENCODER_TASKS)}")
    pooling = _pooling(options, task, hf_config, st)
    dtype = _dtype(options.torch_dtype, hf_config)
    shapes = _shapes(options, task, pooling, dtype, st)
    max_pos = getattr(hf_config, "max_position_embeddings", None)  # (encoder families check their position table)
    if max_pos is not None and shapes.sequence_length > max_pos:
        raise ShapeError(f"--sequence_length {shapes.sequence_length} exceeds the model's max_position_embeddings "
                         f"({max_pos}); use --sequence_length <= {max_pos}")
    return EncoderPlan(source=source, hf_config=hf_config, task=task, pooling=pooling, shapes=shapes,
                       sentence_transformers=st)


def _pooling(options, task: str, hf_config: Any, st: SentenceTransformerInfo | None) -> Pooling | None:
    from neuron_export.models import supported_model_types

    asked = getattr(options, "pooling", None)
    if asked is not None and asked not in POOLING_MODES:
        raise ExportError(f"--pooling {asked!r}: not a pooling mode; use one of {', '.join(POOLING_MODES)}")
    if task != "feature-extraction":
        if asked is not None:
            raise ExportError(f"--pooling {asked}: pooling applies to --task feature-extraction, not {task}")
        return None
    decoder = hf_config.model_type in supported_model_types()
    if st is not None:
        mode, normalize = asked or st.pooling, st.normalize
    elif decoder:  # the Qwen3-Embedding recipe: the last token's state, L2-normalized
        mode, normalize = asked or "last_token", True
    else:
        mode, normalize = asked, False
    if mode is None:
        return None
    if mode == "last_token" and not decoder:
        raise ExportError(f"--pooling last_token pools a causal decoder's last state; {hf_config.model_type} attends "
                          "both ways: use cls or mean")
    return Pooling(mode=mode, normalize=normalize)


def _dtype(requested: str, hf_config: Any) -> str:
    if requested != "auto":
        return requested
    # Encoders are small and their embeddings are compared by cosine: float32 unless asked (checkpoints often say
    # float16 for storage only).
    dtype = str(getattr(hf_config, "dtype", None) or "float32").removeprefix("torch.")
    return "bfloat16" if dtype == "bfloat16" else "float32"


def _shapes(options, task: str, pooling: Pooling | None, dtype: str, st: SentenceTransformerInfo | None) -> EncoderShapes:
    from neuron_export.export import default_buckets

    seq = options.sequence_length
    buckets = options.context_buckets or default_buckets(seq, min(DEFAULT_SMALLEST_BUCKET, seq))
    buckets = sorted(set(buckets))
    batch = options.batch_size
    rows = list(options.batch_buckets) if options.batch_buckets else sorted({1, batch})
    if rows[-1] != batch or sorted(set(rows)) != rows or rows[0] < 1:
        raise ShapeError(f"--batch_buckets {','.join(map(str, rows))}: strictly increasing, each >= 1, ending at "
                         f"--batch_size ({batch})")
    if buckets[-1] != seq:
        raise ShapeError(f"--context_buckets {','.join(map(str, buckets))}: an encoder's sequence buckets must end at "
                         f"--sequence_length ({seq}), its longest input")
    unused = [n for n, v in (("--decode_batches", options.decode_batches), ("--kv_buckets", options.kv_buckets),
                             ("--chunk_buckets", options.chunk_buckets), ("--quantize", options.quantize),
                             ("--max_context_length", options.max_context_length))
              if v not in (None, [])]
    if options.on_device_sampling:
        unused.append("--on-device-sampling")
    if options.tensor_parallel_size != 1:
        unused.append("--tensor_parallel_size")
    if unused:
        raise ShapeError(f"{', '.join(unused)}: decoder options; an encoder ({task}) has no KV cache, decoding or "
                         "sampling, and runs on one rank. Drop them")
    try:
        NeuronConfig.validate_shapes(batch_size=batch, max_batch_size=batch, sequence_length=seq,
                                     max_context_length=seq, context_buckets=buckets)
    except NeuronConfigError as err:
        raise ShapeError(str(err).replace("neuron_config field", "option")) from None
    return EncoderShapes(batch_buckets=rows, sequence_buckets=buckets, task=task,
                         pooling=pooling.mode if pooling else None, dtype=dtype)


def export_encoder(options, plan: EncoderPlan, output: OutputPlan, log) -> Any:
    from neuron_export.export import ExportResult, graph_code_digest

    start = time.perf_counter()
    source, shapes, hf_config = plan.source, plan.shapes, plan.hf_config
    backend = get_backend(options.backend)
    target = options.target or backend.default_target
    check_target(backend, target)
    cache = CompileCache.from_env(options.cache_url, enabled=not options.disable_neuron_cache)
    pooled = f", pooling {plan.pooling.mode}{' + normalize' if plan.pooling.normalize else ''}" if plan.pooling else ""
    log(f"Exporting {options.model} ({hf_config.model_type}) for {plan.task}{pooled}: batch buckets "
        f"{shapes.batch_buckets}, sequence buckets {shapes.sequence_buckets}, {shapes.dtype}, backend "
        f"{backend.name}/{target}")
    backend_id = {"name": backend.name, "target": target, "package_version": __version__,
                  "graph_code": graph_code_digest(), **backend.versions()}
    if target == "cpu":
        backend_id["cpu_isa"] = torch.backends.cpu.get_cpu_capability()

    with output.staged() as out:
        (out / GRAPHS_DIR).mkdir()
        (out / WEIGHTS_DIR).mkdir()
        t = time.perf_counter()
        hf_state = load_state_dict(source)
        model = _bind(hf_config, shapes, hf_state)
        log(f"Loaded and converted the checkpoint in {time.perf_counter() - t:.1f} s")
        graphs, seconds = _compile(model, hf_config, shapes, backend, target, backend_id, options, out, cache, log)
        tensors = {n: p.detach().contiguous() for n, p in model.named_parameters()}
        tensors.update({n: b.contiguous() for n, b in model.named_buffers()})
        from neuron_export.export import _save

        weights = _save(tensors, out, f"{WEIGHTS_DIR}/model.safetensors")
        for name in ENCODER_COPIED:
            if (source.directory / name).is_file():
                shutil.copy2(source.directory / name, out / name)
            elif name == "sentence_bert_config.json" and (Path(options.model) / name).is_file():
                shutil.copy2(Path(options.model) / name, out / name)  # the folder's, when the checkpoint is below it
        seq = shapes.sequence_length
        config = NeuronConfig(
            schema_version=SCHEMA_VERSION,
            producer=Producer(package="neuron-export", version=__version__),
            task=plan.task, model_type=hf_config.model_type,
            architecture=(hf_config.architectures or [type(model).__name__])[0],
            checkpoint_id=options.model, checkpoint_revision=source.revision,
            batch_size=shapes.batch_size, max_batch_size=shapes.batch_size,
            sequence_length=seq, max_context_length=seq, context_buckets=shapes.sequence_buckets,
            batch_buckets=shapes.batch_buckets if shapes.batch_buckets != [shapes.batch_size] else [],
            pooling=plan.pooling, torch_dtype=shapes.dtype,
            target=Target(backend=backend.name, device=target, **backend.versions()),
            graphs=graphs,
            weights=WeightsSpec(files=[FileEntry(path=weights, sha256=sha256_file(out / weights))],
                                aliases=tied_aliases(model)),
            metadata={"cpu_isa": torch.backends.cpu.get_cpu_capability() if target == "cpu" else None,
                      "pad_token_id": getattr(hf_config, "pad_token_id", None),
                      "eos_token_id": getattr(hf_config, "eos_token_id", None),
                      "max_seq_length": plan.sentence_transformers.max_seq_length if plan.sentence_transformers
                      else None},
        )
        config.save(out)
        max_diff = None
        if not options.disable_validation:
            max_diff = _validate(out, plan, options, log)
        if not options.disable_neuron_cache:
            cache.register_export(options.model, config.to_dict())
    output.install(out)
    took = time.perf_counter() - start
    log(f"Artifact written to {options.output} in {took:.1f} s")
    return ExportResult(output=Path(options.output), config=config, seconds=took, compile_seconds=seconds,
                        validation_max_diff=max_diff, cache_stats=cache.stats.as_dict())


def _bind(hf_config: Any, shapes: EncoderShapes, hf_state: dict[str, torch.Tensor]) -> torch.nn.Module:
    from neuron_export.models.encoders.build import bind_encoder_checkpoint, build_encoder

    family, model = build_encoder(hf_config, shapes.task, shapes.pooling, shapes.dtype, shapes.sequence_length)
    bind_encoder_checkpoint(family, model, hf_state)
    return model.eval()


def graph_name(rows: int, bucket: int) -> str:
    return f"encoder_b{rows}_s{bucket}"


def _compile(model, hf_config, shapes: EncoderShapes, backend, target: str, backend_id: dict[str, Any], options,
             out: Path, cache, log) -> tuple[dict[str, GraphEntry], dict[str, float]]:
    """Every (rows, bucket) graph through the compile cache; in worker processes when the backend compiles from
    shapes (several at once on several cores), else here one after another."""
    from neuron_export.backends import KernelChoice
    from neuron_export.export import _compile_workers, install_graph

    jobs = [(rows, bucket) for rows in shapes.batch_buckets for bucket in shapes.sequence_buckets]
    # Inductor's kernels on every core, not on one as for the decoders (torch_aot.default_flags: decode-sized
    # elementwise work): an encoder's LayerNorms and GELUs span (rows x bucket x hidden). MiniLM float32 graph calls,
    # interleaved in one process on a 2-core Zen4: batch 32 x 14 tokens 79.5 -> 73.3 ms, x 128 tokens 585 -> 572 ms;
    # within noise in bench/embedding_bench.py's whole encode().
    ours = {"cpp.threads": -1} if backend.name == "torch-aot" and target == "cpu" else {}
    asked = {**ours, **options.flags}
    flags = {**backend.default_flags(target), **asked}
    arch = {**asdict(model.arch), "task": shapes.task, "pooling": shapes.pooling}
    trust_lock = threading.Lock()
    workers = _compile_workers(options, backend, len(jobs))
    pool = WorkerPool(workers) if workers else None

    def one(i: int, rows: int, bucket: int) -> tuple[str, GraphEntry, float]:
        name = graph_name(rows, bucket)
        static = {"torch_dtype": shapes.dtype, "tensor_parallel_size": 1, "quantization": None, "rows": rows}
        key = graph_cache_key(model_config=arch, shape_fields={"torch_dtype": shapes.dtype, "rows": rows},
                              role="encoder", bucket=bucket, backend=backend_id, flags=flags)
        request = CompileRequest(hf_config=hf_config, shapes=shapes, name=name, role="encoder", bucket=bucket,
                                 rows=rows, kernels=KernelChoice(), flags=dict(asked), static=static,
                                 backend=backend.name, target=target)
        outputs = model.output_specs(rows, bucket)
        compiled_here = []

        def compile_fn(path: Path) -> None:
            compiled_here.append(True)
            log(f"[{i}/{len(jobs)}] compiling {name} ...")
            if pool is not None:
                got, _ = pool.run(_with_output(request, path))
            else:
                got = compile_graph(model, _with_output(request, path)).outputs
            if got != outputs:
                raise ExportError(f"backend {backend.name} produced outputs {got} for {name}, expected {outputs}")

        t = time.perf_counter()
        filename = f"{name}{backend.file_extension}"
        inputs = [{"name": n, "shape": [rows, bucket], "dtype": "int64"} for n in model.input_names()]
        cached = cache.get_or_compile(key, compile_fn, filename=filename,
                                      meta={"graph": name, "inputs": inputs, "outputs": outputs})
        rel, digest = install_graph(cached, out, filename, f"{name} of {options.model}", trust_lock)
        took = time.perf_counter() - t
        log(f"[{i}/{len(jobs)}] {name}: {'compiled' if compiled_here else 'from the compile cache'} in {took:.1f} s")
        return name, GraphEntry(file=rel, sha256=digest, role="encoder", bucket=bucket, rows=rows,
                                inputs=[TensorSpec(**s) for s in inputs],
                                outputs=[TensorSpec(**s) for s in outputs]), took

    try:
        results = run_jobs(one, [(i, *job) for i, job in enumerate(jobs, 1)], pool)
    finally:
        if pool is not None:
            pool.stop()
            pool.close()
    return {n: e for n, e, _ in results}, {n: s for n, _, s in results}


def _with_output(request: CompileRequest, path: Path) -> CompileRequest:
    from dataclasses import replace

    return replace(request, output=str(path))


def compile_encoder_graph(model, request: CompileRequest):
    """compile_worker's encoder branch: the (rows, bucket) graph of an encoder module."""
    from neuron_export.backends import GraphJob, get_backend

    rows, bucket = request.rows, request.bucket
    job = GraphJob(name=request.name, role="encoder", bucket=bucket, module=model,
                   example_inputs=model.example_inputs(rows, bucket), input_names=model.input_names(),
                   output_names=model.output_names(), flags=dict(request.flags), static=dict(request.static),
                   kernels=request.kernels)
    return get_backend(request.backend).compile(job, Path(request.output), request.target)


def encoder_skeleton(hf_config, shapes: EncoderShapes):
    from neuron_export.models.encoders.build import build_encoder

    _, model = build_encoder(hf_config, shapes.task, shapes.pooling, shapes.dtype, shapes.sequence_length)
    return model.eval()


def _validate(out: Path, plan: EncoderPlan, options, log) -> float | None:
    try:
        from neuron_infer.validate_encoder import ValidationError, validate_encoder_artifact
    except ImportError:
        log("Validation skipped: neuron-infer is not installed (pip install 'neuron-export[validate]')")
        return None
    from neuron_export.errors import ValidationFailedError

    atol = options.atol if options.atol is not None else DEFAULT_ATOL[plan.shapes.dtype]
    try:
        return validate_encoder_artifact(out, plan.source.directory, atol, log)
    except ValidationError as err:
        raise ValidationFailedError(str(err)) from None

