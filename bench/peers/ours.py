"""This project: neuron-export (torch.export + AOTInductor) then neuron-infer's generate, and neuron-vllm's server."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

from common import CACHE, PeerFailed, smollm2_gguf

ARTIFACTS = CACHE / "artifacts"
QUANTIZED = ("int8", "int4")


def supports_quantize() -> bool:
    """Weight-only quantization is being added to ExportOptions concurrently: feature-detect, never assume."""
    from neuron_export.export import ExportOptions

    return "quantize" in {f.name for f in dataclasses.fields(ExportOptions)}


def variant_options(variant: str) -> dict:
    """float32 / bfloat16, or int8 / int4 weight-only (bfloat16 activations, as 16-bit is the fast path there)."""
    if variant in QUANTIZED:
        return dict(torch_dtype="bfloat16", quantize=variant)
    return dict(torch_dtype=variant)


def export_artifact(name: str, reuse: bool, **shapes) -> tuple[Path, float | None]:
    """Export into .bench/artifacts/<name> with the compile cache off, so the seconds are a cold compile.
    With reuse, an existing artifact is kept and no time is reported."""
    from neuron_export.export import ExportOptions, export

    path = ARTIFACTS / name
    if reuse and (path / "neuron_config.json").is_file():
        return path, None
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    t = time.perf_counter()
    try:
        export(ExportOptions(model=str(smollm2_gguf()), output=str(path), disable_neuron_cache=True,
                             disable_validation=True, **shapes), log=lambda _m: None)
    except Exception as err:  # any export error is this peer's result, not the bench's crash
        raise PeerFailed(f"export: {type(err).__name__}: {str(err)[:200]}") from err
    return path, time.perf_counter() - t


def load_to_first_token(artifact: Path, prompt: list[int]) -> float:
    """A fresh process: import, load the artifact, prefill the prompt and produce one token."""
    code = (
        "import time; t = time.perf_counter(); import torch;"
        "from neuron_infer import NeuronModelForCausalLM;"
        f"m = NeuronModelForCausalLM.from_pretrained({str(artifact)!r});"
        f"m.generate(torch.tensor([{json.dumps(prompt)}]), max_new_tokens=1);"
        "print(time.perf_counter() - t)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PeerFailed(f"fresh-process load: {(proc.stderr.strip().splitlines() or ['?'])[-1][:200]}")
    return float(proc.stdout.strip().splitlines()[-1])


def load(artifact: Path):
    """A generate(ids, n) callable like transformers': greedy, exactly n new tokens."""
    import torch

    from neuron_infer import NeuronModelForCausalLM

    model = NeuronModelForCausalLM.from_pretrained(artifact)

    def generate(ids, n: int):
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, eos_token_id=None)

    return generate


_DTYPE_BYTES = {"F64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "I8": 1, "U8": 1,
                "F8_E4M3": 1, "F8_E5M2": 1, "BOOL": 1, "I64": 8}


def weight_bytes(artifact: Path) -> int:
    """Stored weight bytes a decode step reads: every tensor in weights/ once, whatever its dtype (so int8/int4
    packings and their scales count as stored); rope tables excluded (a few rows are read, not all)."""
    from safetensors import safe_open

    total = 0
    for file in sorted((artifact / "weights").glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for name in f.keys():
                if name.startswith("rope_"):
                    continue
                s = f.get_slice(name)
                numel = 1
                for d in s.get_shape():
                    numel *= d
                total += numel * _DTYPE_BYTES.get(s.get_dtype(), 4)
    return total


def server_command(artifact: Path, port: int) -> list[str]:
    """neuron-vllm serve, started from this interpreter (the console script may belong to another install)."""
    code = "import sys; from neuron_vllm.cli import main; sys.argv[0] = 'neuron-vllm'; main()"
    return [sys.executable, "-c", code, "serve", str(artifact), "--port", str(port)]


def check_artifact(artifact: Path) -> None:
    if not (artifact / "neuron_config.json").is_file():
        raise PeerFailed(f"no artifact at {artifact}")
