"""Session fixtures for the vLLM tests: one exported SmolLM2 artifact (torch-aot, exported once and
kept under a temp directory between runs), its transformers reference, and vLLM's own CPU backend
serving the same weights (a float32 checkpoint written from the reference). The tokenizer and the tiny torch-export
artifact with its reference come from tests/support/fixtures.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import transformers
from filelock import FileLock
from support.smollm2 import SMOLLM2_GGUF, smollm2_dir, smollm2_gguf
from vllm_testlib import SMOLLM2_SHAPES, serve, serve_vllm_cpu

from neuron_cache import Artifact, ArtifactError, NeuronConfigError


def _artifacts_root() -> Path:
    # Per test session by default (tests/conftest.py points XDG_CACHE_HOME at a fresh temporary
    # directory), so a run never serves graphs exported by older code. A torch-aot export of SmolLM2
    # takes minutes: set NEURON_VLLM_TEST_ARTIFACTS to keep artifacts across local runs.
    default = Path(os.environ.get("XDG_CACHE_HOME", tempfile.gettempdir())) / "neuron-vllm-tests"
    root = Path(os.environ.get("NEURON_VLLM_TEST_ARTIFACTS", default))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _matches(path: Path, shapes: dict) -> bool:
    try:
        config = Artifact.open(path).config
    except (ArtifactError, NeuronConfigError, OSError):
        return False
    return (config.target.torch_version == torch.__version__ and config.target.backend == shapes["backend"]
            and all(getattr(config, k) == v for k, v in shapes.items() if k != "backend"))


@pytest.fixture(scope="session")
def smollm2_artifact() -> Path:
    from neuron_export.export import ExportOptions, export

    s = SMOLLM2_SHAPES
    name = (f"smollm2-b{s['batch_size']}-s{s['sequence_length']}-c{s['max_context_length']}-"
            f"k{'_'.join(map(str, s['context_buckets']))}-ch{'_'.join(map(str, s['chunk_buckets']))}-{s['torch_dtype']}-"
            f"{s['backend']}")
    path = _artifacts_root() / name
    with FileLock(str(path) + ".lock"):
        if not _matches(path, s):
            export(ExportOptions(model=str(smollm2_gguf()), output=str(path), **s), log=print)
    return path


@pytest.fixture(scope="session")
def smollm2_reference() -> transformers.LlamaForCausalLM:
    return transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF,
                                                             dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def smollm2_hf_dir(request, tokenizer) -> Path:
    """The weights the artifact was exported from (the GGUF as transformers dequantizes it), as a float32
    transformers checkpoint that vLLM's own CPU backend loads (head_dim 64: its attention supports it)."""
    path = _artifacts_root() / "smollm2-hf-float32"
    with FileLock(str(path) + ".lock"):
        if not (path / "config.json").is_file():
            smollm2_reference = request.getfixturevalue("smollm2_reference")  # loaded only when the copy is missing
            # The reference remembers it came from a GGUF and refuses save_pretrained: copy it into a plain model.
            config = transformers.LlamaConfig.from_dict(
                {k: v for k, v in smollm2_reference.config.to_dict().items() if k != "quantization_config"})
            plain = transformers.LlamaForCausalLM(config)
            plain.load_state_dict(smollm2_reference.state_dict())
            partial = path.with_name(path.name + ".partial")  # renamed when complete: an interrupted save is redone
            shutil.rmtree(partial, ignore_errors=True)
            plain.to(torch.float32).save_pretrained(partial)
            tokenizer.save_pretrained(partial)
            partial.rename(path)
    return path


@pytest.fixture(scope="session")
def vllm_cpu_smollm2(smollm2_hf_dir, tmp_path_factory):
    """vLLM's own CPU backend on SmolLM2 (served as "smollm2", the neuron artifact's shapes), once per session."""
    s = SMOLLM2_SHAPES
    with serve_vllm_cpu(smollm2_hf_dir, tmp_path_factory.mktemp("vllm-cpu"), "--served-model-name", "smollm2",
                        "--dtype", "float32", "--max-model-len", str(s["sequence_length"]),
                        "--max-num-seqs", str(s["batch_size"])) as server:
        yield server


@pytest.fixture(scope="session")
def smollm2_server(smollm2_artifact, tmp_path_factory):
    """One `neuron-vllm serve` of the SmolLM2 artifact, served as "smollm2", for test_server, test_sampling_parity
    and test_long_prompts_server (a server start costs 20-40 s). `--max-num-batched-tokens 64`: vLLM must split
    every longer prompt into chunks. `--trust-remote-code`: an artifact reused from an earlier session
    (NEURON_VLLM_TEST_ARTIFACTS) has graphs this session's trust store does not know."""
    with serve(smollm2_artifact, tmp_path_factory.mktemp("smollm2-server"), "--served-model-name", "smollm2",
               "--trust-remote-code", "--max-num-batched-tokens", "64") as server:
        yield server



@pytest.fixture(scope="session")
def minilm_server(minilm_artifact, tmp_path_factory):
    """One `neuron-vllm serve` of the MiniLM embedding artifact (support.fixtures, shared with tests/infer), served
    as "minilm", for test_embeddings."""
    with serve(minilm_artifact, tmp_path_factory.mktemp("minilm-server"), "--served-model-name", "minilm") as server:
        yield server
