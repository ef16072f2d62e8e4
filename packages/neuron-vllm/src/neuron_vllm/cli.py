"""The `neuron-vllm` command: `neuron-vllm serve MODEL` starts vLLM's OpenAI-compatible server.

Nothing heavy is imported here; the server replaces this process (exec), so stopping it is
stopping the command, and signals sent to this process group reach vLLM and its engine core.
"""

from __future__ import annotations

import os

import click

from neuron_cache import ArtifactError, NeuronConfigError
from neuron_vllm.launch import (
    ServeError,
    ServeOptions,
    check_trusted,
    resolve_artifact,
    server_command,
    server_env,
)


def _buckets(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers, e.g. 128,256") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Serve neuron artifacts with vLLM."""


@main.command(context_settings={"show_default": True, "ignore_unknown_options": True})
@click.argument("model")
@click.option("--host", default="127.0.0.1", help="Interface to bind; 0.0.0.0 exposes the server to the network.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000)
@click.option("--batch_size", "--batch-size", type=click.IntRange(min=1), default=None,
              help="Slots to compile (export only; default 8). With an artifact it must match.")
@click.option("--sequence_length", "--sequence-length", type=click.IntRange(min=1), default=None,
              help="Compiled sequence length (export only; default 512). = vLLM's max_model_len.")
@click.option("--max_context_length", "--max-context-length", type=click.IntRange(min=1), default=None,
              help="Longest prompt (export only; default: the sequence length).")
@click.option("--context_buckets", "--context-buckets", callback=_buckets, default=None,
              help="Prompt buckets, comma-separated (export only).")
@click.option("--batch_buckets", "--batch-buckets", callback=_buckets, default=None,
              help="Embedding models: the batch sizes compiled, e.g. 1,8 (export only; default 1 and batch_size).")
@click.option("--tensor_parallel_size", "--tensor-parallel-size", type=click.IntRange(min=1), default=None)
@click.option("--torch_dtype", "--torch-dtype", "--dtype", default=None, help="float32, bfloat16, float16.")
@click.option("--backend", default="torch-aot", help="Export backend when MODEL is not an artifact.")
@click.option("--output", default=None, help="Where to export (default: under $NEURON_VLLM_ARTIFACTS).")
@click.option("--served-model-name", "--served_model_name", default=None, help="Model name in the API.")
@click.option("--trust-remote-code", is_flag=True,
              help="Run the artifact's compiled graphs even if this machine did not compile them (they are native "
                   "code; see the README's security section). Passed on to vLLM.")
@click.option("--dry-run", is_flag=True, help="Resolve/export, print the vLLM command, do not start it.")
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
def serve(model: str, dry_run: bool, vllm_args: tuple[str, ...], **options: object) -> None:
    """Serve MODEL (an artifact directory, or a checkpoint directory / Hub id / .gguf to export first).

    Other arguments go to vLLM's server unchanged (after `--`, or mixed in), e.g. `--api-key KEY`; for tool calling
    `--enable-auto-tool-choice --tool-call-parser hermes`; for structured outputs `--structured-outputs-config
    '{"backend": "xgrammar"}'`; `--logprobs-mode processed_logprobs`. Sampling and structured outputs are vLLM's own
    when the artifact returns logits (exported without --on_device_sampling).
    """
    opts = ServeOptions(model=model, vllm_args=[a for a in vllm_args if a != "--"], **options)
    if "--trust-remote-code" in opts.vllm_args:
        opts.trust_remote_code = True
    try:
        artifact = resolve_artifact(opts, log=lambda m: click.echo(m, err=True))
        check_trusted(artifact, opts)
        command = server_command(artifact, opts)
    except (ServeError, NeuronConfigError, ArtifactError) as err:
        raise click.UsageError(str(err)) from None
    click.echo("neuron-vllm: " + " ".join(command), err=True)
    if dry_run:
        return
    os.execve(command[0], command, server_env())
