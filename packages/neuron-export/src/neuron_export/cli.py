"""The `neuron-export` command line.

This module must stay cheap to import: `neuron-export --help` answers without importing torch,
transformers or neuronx_distributed. Heavy modules are imported inside the command body.
"""

from __future__ import annotations

import math
import sys

import click

DTYPES = ("float32", "bfloat16", "float16")


def _parse_buckets(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        buckets = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 32,64,128") from None
    if not buckets:
        raise click.BadParameter("give at least one bucket, e.g. 32,64,128")
    return buckets


def _parse_atol(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    # click's float type takes "nan" and "inf", and a NaN tolerance would let any difference pass.
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"{value}: the tolerance must be a finite number >= 0, e.g. 0.001 "
                                 "(leave it out for the dtype's default)")
    return value


def _parse_decode_batches(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is not None and value.strip().lower() == "none":
        return []
    return _parse_buckets(ctx, param, value)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--model", "-m", default=None, help="Hub model id, local checkpoint directory, or a .gguf file.")
@click.option("--task", default="auto", help="Task to export for: text-generation, feature-extraction (embeddings), "
              "fill-mask, text-classification, token-classification, question-answering; 'auto' infers it from the "
              "checkpoint (a sentence-transformers folder: feature-extraction with its pooling).")
@click.option("--batch_size", "--batch-size", type=click.IntRange(min=1), default=1, help="Compiled batch (slots).")
@click.option("--sequence_length", "--sequence-length", type=click.IntRange(min=1), default=512,
              help="Total tokens per sequence (prompt + generated): the KV-cache length. Encoders: the longest input.")
@click.option("--max_context_length", "--max-context-length", type=click.IntRange(min=1), default=None,
              help="Longest prompt; defaults to sequence_length.")
@click.option("--context_buckets", "--context-buckets", callback=_parse_buckets, default=None,
              help="Comma-separated prompt buckets; default: powers of two from 64 up to max_context_length.")
@click.option("--decode_batches", "--decode-batches", callback=_parse_decode_batches, default=None,
              help="Extra token-generation graphs over this many slots, e.g. 1,4, or 'none' (default: 1 when "
                   "batch_size > 1): a step with few live sequences then costs what those rows cost.")
@click.option("--kv_buckets", "--kv-buckets", callback=_parse_decode_batches, default=None,
              help="Token-generation graphs attending over only this many KV positions, e.g. 512,1024, or 'none' "
                   "(default: 512, 1024, ... below sequence_length): decode cost follows the live context, not "
                   "the compiled sequence_length.")
@click.option("--chunk_buckets", "--chunk-buckets", callback=_parse_decode_batches, default=None,
              help="Chunked-prefill graphs of these chunk lengths (each <= max_context_length), e.g. 64,256, or "
                   "'none' (default: the smallest prompt bucket and the largest one up to 256): prompts longer than "
                   "max_context_length, and prompts continuing a reused KV prefix, are encoded chunk by chunk.")
@click.option("--batch_buckets", "--batch-buckets", callback=_parse_buckets, default=None,
              help="Encoders: the batch sizes compiled, e.g. 1,8,32, ending at --batch_size (default: 1 and "
                   "batch_size). A request runs in the smallest graph that holds it.")
@click.option("--pooling", type=click.Choice(("cls", "mean", "max", "mean_sqrt_len_tokens", "last_token")),
              default=None, help="Encoders, feature-extraction: pool token states into sentence embeddings this "
                                 "way (default: a sentence-transformers folder's own pooling; last_token for a decoder "
                                 "embedder; else none).")
@click.option("--tensor_parallel_size", "--tensor-parallel-size", type=click.IntRange(min=1), default=1,
              help="Ranks the model is split over: one SPMD graph set with its all-reduces inside, a weights file "
                   "per rank; from_pretrained starts the ranks (see the README, Tensor-parallel inference).")
@click.option("--expert_parallel_size", "--expert-parallel-size", type=click.IntRange(min=1), default=1,
              help="Mixture-of-experts models: groups of the tensor-parallel ranks that each hold num_experts / ep "
                   "whole experts (each expert's hidden dimension split over the tp / ep ranks of its group); must "
                   "divide --tensor_parallel_size.")
@click.option("--torch_dtype", "--torch-dtype", type=click.Choice(("auto", *DTYPES)), default="auto",
              help="Compute dtype; 'auto' keeps the checkpoint's (float32 for GGUF).")
@click.option("--on-device-sampling/--no-on-device-sampling", default=False,
              help="Sample inside the graph (top-k/top-p/temperature per row) instead of returning logits.")
@click.option("--max_topk", "--max-topk", type=click.IntRange(min=1), default=256,
              help="Largest top_k the on-device sampler supports.")
@click.option("--prepack-weights/--no-prepack-weights", default=None,
              help="Decode on weights pre-packed at load for oneDNN's linear (backend torch-aot, target cpu; "
                   "default: on for float32).")
@click.option("--prefill-upcast/--no-prefill-upcast", default=None,
              help="Prefill GEMMs in float32 from bfloat16/float16 weights (backend torch-aot, target cpu; default: "
                   "on when this CPU has no native 16-bit GEMM, e.g. AVX2-only hosts, where it is ~5x faster).")
@click.option("--gemv16/--no-gemv16", default=None,
              help="Decode GEMVs in bfloat16/float16 on neuron-infer's neuron::linear_16bit kernel, built from C++ at "
                   "first use (backend torch-aot, target cpu; default: on where it beats oneDNN, see cpu_kernels.py).")
@click.option("--compile-workers", "compile_workers", type=click.IntRange(min=0), default=None,
              help="Worker processes compiling graphs side by side while the checkpoint loads (backends whose graphs "
                   "hold no weights, e.g. torch-aot); 0 compiles in this process. Default: one per core.")
@click.option("--quantize", type=click.Choice(("int8", "int4")), default=None,
              help="Weight-only quantization of every linear and the lm_head (backend torch-aot, target cpu; "
                   "bfloat16 activations). From a Q4_0/Q4_1 GGUF, int4 takes the blocks as they are.")
@click.option("--quant-group-size", "--quant_group_size", type=click.IntRange(min=1), default=32,
              help="int4: input channels sharing one (scale, zero): 32, 64, 128 or 256.")
@click.option("--backend", default="torch-aot", help="Compile backend (see --list-backends).")
@click.option("--target", default=None, help="Device target, e.g. cpu, cuda, trn1, inf2; default: the backend's.")
@click.option("--atol", type=float, default=None, callback=_parse_atol,
              help="Validation tolerance on logits; default depends on dtype.")
@click.option("--disable-validation", is_flag=True, help="Skip the comparison with transformers' eager model.")
@click.option("--trust-remote-code", is_flag=True, help="Allow custom modeling code from the Hub.")
@click.option("--disable-neuron-cache", is_flag=True, help="Do not read or write the compile cache.")
@click.option("--cache-url", default=None, envvar="NEURON_COMPILE_CACHE_URL",
              help="Compile cache location: a path, s3://bucket/prefix or hf://org/repo.")
@click.option("--list-backends", is_flag=True, help="Print the available backends and exit.")
@click.argument("output", type=click.Path(file_okay=False), required=False)
def main(**options: object) -> None:
    """Compile a Hugging Face model ahead of time into an artifact directory OUTPUT."""
    if options.pop("list_backends"):
        from neuron_export.backends import describe_backends

        for line in describe_backends():
            click.echo(line)
        return
    if options["model"] is None:
        raise click.UsageError("Missing option '--model' / '-m': a Hub model id, a checkpoint directory or a .gguf file.")
    if options["output"] is None:
        raise click.UsageError("Missing argument 'OUTPUT': the directory to write the artifact into.")
    from neuron_export.errors import USER_ERRORS, one_line
    from neuron_export.export import ExportOptions, export

    try:
        export(ExportOptions.from_cli(options), log=click.echo)
    except USER_ERRORS as err:  # a user's mistake: one line, no traceback (anything else is a bug and shows one)
        click.echo(f"Error: {one_line(err)}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
