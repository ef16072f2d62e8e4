"""Loading an artifact never runs code it was not allowed to, never binds a tensor the graph was not
compiled for, and never leaves temporary files behind (issue 10).

- Trust: graphs this machine exported load as they are; any other graph file (a payload swapped in,
  its sha256 updated in neuron_config.json as an attacker would) is refused before it is opened, and
  the payload's code provably runs only with trust_remote_code=True (checked in a child process).
- Signatures: a stale or crafted neuron_config.json (state dtype or shape, batch size, sequence length,
  a smaller weight) is refused by name against the signature compiled into the graph, for the
  export-only backend in process and for torch-aot (pointer-bound constants, where the same mistake
  used to abort or read out of bounds) in a child process so that a regression fails the test
  instead of killing pytest.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from neuron_cache import ArtifactError, NeuronConfig, sha256_file
from neuron_cache.signature import SIGNATURE_KEY, SignatureError
from neuron_cache.trust import UntrustedGraphsError, is_trusted
from neuron_infer import NeuronModelForCausalLM

PROMPT = torch.tensor([[1, 17, 33, 5, 90, 41, 7]])


# ---- helpers ---------------------------------------------------------------------------------------
def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit(root: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = root / "neuron_config.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _rehash(root: Path) -> None:
    """Update every listed sha256 to the files as they are now: what someone tampering with an artifact does."""

    def change(data: dict[str, Any]) -> None:
        for graph in data["graphs"].values():
            graph["sha256"] = sha256_file(root / graph["file"])
        for entry in data["weights"]["files"]:
            entry["sha256"] = sha256_file(root / entry["path"])

    _edit(root, change)


def _rewrite_zip(path: Path, replace: Callable[[str, bytes], bytes | None]) -> None:
    """Rewrite a .pt2 archive entry by entry; `replace` returns new bytes, the same bytes, or None to drop."""
    tmp = path.with_suffix(".rewrite")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
        for info in src.infolist():
            data = replace(info.filename, src.read(info.filename))
            if data is not None:
                dst.writestr(info, data)
    os.replace(tmp, path)


class _Payload:
    """Unpickling this runs code: it writes `marker`."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _pickle_payload(root: Path, marker: Path) -> None:
    """Swap a torch-export graph's pickled sample inputs for a payload (torch.export.load unpickles them)."""
    import io

    buffer = io.BytesIO()
    torch.save(_Payload(str(marker)), buffer)
    _rewrite_zip(root / "graphs" / "token_generation.pt2",
                 lambda name, data: buffer.getvalue() if name.endswith("data/sample_inputs/model.pt") else data)
    _rehash(root)


def _native_payload(root: Path, marker: Path, tmp: Path) -> None:
    """Swap a torch-aot graph's shared library for one whose constructor writes `marker` when it is dlopen'ed."""
    source = tmp / "evil.c"
    source.write_text(textwrap.dedent(f"""
        #include <stdio.h>
        __attribute__((constructor)) static void evil(void) {{
            FILE *f = fopen("{marker}", "w");
            if (f) {{ fputs("ran", f); fclose(f); }}
        }}
    """))
    library = tmp / "evil.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    _rewrite_zip(root / "graphs" / "token_generation.pt2",
                 lambda name, data: library.read_bytes() if name.endswith(".wrapper.so") else data)
    _rehash(root)


def _run_child(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          env=env)


LOAD_WITH_CONSENT = """
    import sys
    from neuron_infer import NeuronModelForCausalLM
    try:
        NeuronModelForCausalLM.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else {root!r}, trust_remote_code=True)
    except Exception as err:
        print("load failed after consent:", type(err).__name__)
"""


# ---- trust -----------------------------------------------------------------------------------------
def test_graphs_exported_here_are_in_the_ledger_and_load_without_consent(tiny_artifact):
    config = NeuronConfig.load(tiny_artifact)
    assert all(is_trusted(sha256_file(tiny_artifact / g.file)) for g in config.graphs.values())
    model = NeuronModelForCausalLM.from_pretrained(tiny_artifact)
    assert model.runtime.trust.untrusted == [] and not model.runtime.trust.consented


def test_a_pickle_payload_in_a_torch_export_graph_never_runs_without_consent(tiny_artifact, tmp_path):
    root = _copy(tiny_artifact, tmp_path / "a")
    marker = tmp_path / "pwned"
    _pickle_payload(root, marker)
    with pytest.raises(UntrustedGraphsError) as caught:
        NeuronModelForCausalLM.from_pretrained(root)
    message = str(caught.value)
    assert "graphs/token_generation.pt2 was not compiled on this machine" in message
    assert "trust_remote_code=True" in message and "--trust-remote-code" in message and "neuron-export" in message
    assert not marker.exists()
    # The payload is real: with consent, loading runs it (in a child process).
    out = _run_child(LOAD_WITH_CONSENT.format(root=str(root)))
    assert marker.read_text() == "ran", out.stdout + out.stderr[-2000:]


def test_a_native_library_in_a_torch_aot_graph_never_runs_without_consent(tiny_aot_artifact, tmp_path):
    root = _copy(tiny_aot_artifact, tmp_path / "a")
    marker = tmp_path / "pwned"
    _native_payload(root, marker, tmp_path)
    with pytest.raises(UntrustedGraphsError, match="compiled shared library \\(native code\\)"):
        NeuronModelForCausalLM.from_pretrained(root)
    assert not marker.exists()
    out = _run_child(LOAD_WITH_CONSENT.format(root=str(root)))
    assert marker.read_text() == "ran", out.stdout + out.stderr[-2000:]


def test_a_graph_swapped_after_the_check_is_not_the_one_that_runs(tiny_artifact, tmp_path):
    """Buckets load lazily: the file on disk at that moment may not be the one that was checked."""
    root = _copy(tiny_artifact, tmp_path / "a")
    model = NeuronModelForCausalLM.from_pretrained(root)  # checked now; context_encoding_8 not loaded yet
    marker = tmp_path / "pwned"
    evil = _copy(tiny_artifact, tmp_path / "evil")
    _pickle_payload(evil, marker)
    shutil.copyfile(evil / "graphs" / "token_generation.pt2", root / "graphs" / "context_encoding_8.pt2")
    out = model.generate(PROMPT[:, :5], max_new_tokens=3, eos_token_id=None)  # a 5-token prompt: bucket 8
    assert not marker.exists()
    reference = NeuronModelForCausalLM.from_pretrained(tiny_artifact)
    assert torch.equal(out, reference.generate(PROMPT[:, :5], max_new_tokens=3, eos_token_id=None))


def test_artifacts_from_another_machine_need_consent(tiny_artifact, tmp_path, monkeypatch):
    """The same bytes, but a ledger that never saw them (a colleague's machine, a fresh cache)."""
    from neuron_cache import trust

    monkeypatch.setattr(trust, "trust_dir", lambda: tmp_path / "empty-ledger")
    with pytest.raises(UntrustedGraphsError, match=r"graphs/context_encoding_8.pt2, .* and 4 more was not compiled"):
        NeuronModelForCausalLM.from_pretrained(tiny_artifact)
    with pytest.warns(UserWarning, match="running graphs not compiled on this machine"):
        model = NeuronModelForCausalLM.from_pretrained(tiny_artifact, trust_remote_code=True)
    assert model.runtime.trust.consented
    assert model.generate(PROMPT, max_new_tokens=4, eos_token_id=None).shape == (1, PROMPT.shape[1] + 4)


def test_the_engine_follows_the_same_rule(tiny_artifact, tmp_path, monkeypatch):
    from neuron_cache import trust
    from neuron_infer.engine import Engine

    monkeypatch.setattr(trust, "trust_dir", lambda: tmp_path / "empty-ledger")
    with pytest.raises(UntrustedGraphsError):
        Engine.from_artifact(tiny_artifact)
    with pytest.warns(UserWarning):
        engine = Engine.from_artifact(tiny_artifact, trust_remote_code=True)
    assert engine.runtime.trust.consented


# ---- signatures: the graph, not the config, says what it was compiled for ------------------------------
def _state_dtype(data):
    data["state"][0]["dtype"] = "float16"


def _state_shape(data):
    data["state"][0]["shape"][2] //= 2


def _batch_size(data):
    data["batch_size"] = data["max_batch_size"] = 4


def _sequence_length(data):
    data["sequence_length"] += 16


def _declared_inputs(data):
    data["graphs"]["token_generation"]["inputs"][0]["shape"][0] += 1


CONFIG_LIES = {
    "state-dtype": (_state_dtype, r"was compiled with 'layers.0.attn.k_cache' as \[\d+, 2, \d+, 16\] float32, but the "
                                  r"artifact provides \[\d+, 2, \d+, 16\] float16"),
    "state-shape": (_state_shape, r"was compiled with 'layers.0.attn.k_cache' as \[\d+, 2, (\d+), 16\] float32, but "
                                  r"the artifact provides \[\d+, 2, \d+, 16\] float32"),
    "batch-size": (_batch_size, r"was compiled for batch_size=\d, but neuron_config.json says batch_size=4"),
    "sequence-length": (_sequence_length, r"was compiled for sequence_length=\d+, but neuron_config.json says "
                                          r"sequence_length=\d+"),
    "declared-inputs": (_declared_inputs, r"neuron_config.json graphs.token_generation.inputs = \[input_ids \[\d, 1\] "
                                          r"int64.*but the graph was compiled with \[input_ids \[\d, 1\] int64"),
}


def _smaller_weight(root: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = root / "weights" / "model.safetensors"
    tensors = load_file(path)
    tensors["embed_tensors_cut"] = tensors.pop("embed_tokens.weight")[:100].clone()
    tensors["embed_tokens.weight"] = tensors.pop("embed_tensors_cut")
    save_file(tensors, path)
    _rehash(root)


SMALLER_WEIGHT = r"was compiled with 'embed_tokens.weight' as \[160, 64\] float32, but the artifact provides \[100, 64\]"


@pytest.mark.parametrize("case", sorted(CONFIG_LIES))
def test_a_config_that_lies_about_the_graph_is_refused_by_name(tiny_artifact, tmp_path, case):
    change, message = CONFIG_LIES[case]
    root = _copy(tiny_artifact, tmp_path / "a")
    _edit(root, change)
    with pytest.raises(SignatureError, match=message):
        NeuronModelForCausalLM.from_pretrained(root).generate(PROMPT, max_new_tokens=2)


def test_a_smaller_weight_is_refused_by_name(tiny_artifact, tmp_path):
    root = _copy(tiny_artifact, tmp_path / "a")
    _smaller_weight(root)
    with pytest.raises(SignatureError, match=SMALLER_WEIGHT):
        NeuronModelForCausalLM.from_pretrained(root)


AOT_CHILD = """
    import re, sys, torch
    from neuron_infer import NeuronModelForCausalLM
    try:
        NeuronModelForCausalLM.from_pretrained({root!r}).generate(torch.tensor([[1, 17, 33, 5]]), max_new_tokens=2)
        print("LOADED")
    except Exception as err:
        print("REFUSED", type(err).__name__, "|", err)
"""


@pytest.mark.parametrize("case", [*sorted(CONFIG_LIES), "smaller-weight"])
def test_torch_aot_refuses_them_too_instead_of_corrupting_memory(tiny_aot_artifact, tmp_path, case):
    root = _copy(tiny_aot_artifact, tmp_path / "a")
    if case == "smaller-weight":
        _smaller_weight(root)
        message = SMALLER_WEIGHT
    else:
        change, message = CONFIG_LIES[case]
        _edit(root, change)
    out = _run_child(AOT_CHILD.format(root=str(root)))
    assert out.returncode == 0, f"the child died (signal {-out.returncode}): {out.stderr[-2000:]}"
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("REFUSED SignatureError |"), line
    assert re.search(message, line), line


def test_a_graph_without_a_signature_is_refused(tiny_artifact, tmp_path):
    root = _copy(tiny_artifact, tmp_path / "a")
    _rewrite_zip(root / "graphs" / "token_generation.pt2",
                 lambda name, data: None if name.endswith(f"extra/{SIGNATURE_KEY}") else data)
    _rehash(root)
    with pytest.warns(UserWarning), pytest.raises(SignatureError, match=r"carries no signature .* re-export the model"):
        NeuronModelForCausalLM.from_pretrained(root, trust_remote_code=True)


def test_inputs_are_checked_on_every_call(tiny_artifact):
    runtime = NeuronModelForCausalLM.from_pretrained(tiny_artifact).runtime
    decode = runtime._decode
    with pytest.raises(SignatureError, match=r"input 'input_ids' must be \[2, 1\] torch.int64, got \[3, 1\] torch.int64"):
        decode(input_ids=torch.zeros(3, 1, dtype=torch.long), positions=torch.zeros(2, dtype=torch.long))
    with pytest.raises(SignatureError, match=r"input 'positions' must be \[2\] torch.int64, got \[2\] torch.int32"):
        decode(input_ids=torch.zeros(2, 1, dtype=torch.long), positions=torch.zeros(2, dtype=torch.int32))
    with pytest.raises(SignatureError, match=r"takes the inputs \(input_ids, positions\): missing positions$"):
        decode(input_ids=torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(SignatureError, match=r"missing positions; unknown position"):
        decode(input_ids=torch.zeros(2, 1, dtype=torch.long), position=torch.zeros(2, dtype=torch.long))


def test_vocab_size_comes_from_the_compiled_graph(tiny_artifact, tmp_path):
    root = _copy(tiny_artifact, tmp_path / "a")
    _edit(root, lambda d: d["graphs"]["token_generation"]["outputs"][0]["shape"].__setitem__(-1, 10_000))
    with pytest.raises(SignatureError, match=r"graphs.token_generation.outputs"):
        NeuronModelForCausalLM.from_pretrained(root)
    assert NeuronModelForCausalLM.from_pretrained(tiny_artifact).runtime.vocab_size == 160


# ---- the CPU the native code was compiled for ----------------------------------------------------------
def test_torch_aot_graphs_record_the_cpu_features_they_need(tiny_aot_artifact):
    from neuron_infer.graphs import host_cpu_features

    model = NeuronModelForCausalLM.from_pretrained(tiny_aot_artifact)
    needed = set(model.runtime._decode.signature.cpu_features)
    assert needed, "an Inductor CPU graph needs at least the vector ISA it was compiled for"
    assert needed <= host_cpu_features()
    assert needed & {"avx2", "avx512f"}, needed


@pytest.mark.parametrize("drop_config_isa", [False, True])
def test_a_cpu_without_those_features_is_refused_even_without_metadata(tiny_aot_artifact, tmp_path, monkeypatch,
                                                                       drop_config_isa):
    """Removing metadata.cpu_isa from neuron_config.json used to skip the check; the graph's own record is checked."""
    from neuron_infer import graphs

    root = _copy(tiny_aot_artifact, tmp_path / "a")
    if drop_config_isa:
        _edit(root, lambda d: d["metadata"].pop("cpu_isa"))
    monkeypatch.setattr(graphs, "host_cpu_features", lambda: frozenset({"fpu", "sse2"}))
    with pytest.raises(RuntimeError, match=r"was compiled for a CPU with .*(avx2|avx512f).*which this machine lacks"):
        NeuronModelForCausalLM.from_pretrained(root)


# ---- AOTInductor's temporary directories --------------------------------------------------------------
def test_failed_and_finished_loads_leave_no_temporary_directories(tiny_aot_artifact, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    broken = _copy(tiny_aot_artifact, tmp_path / "broken")
    _rewrite_zip(broken / "graphs" / "token_generation.pt2",
                 lambda name, data: b"\x7fELF not a library" if name.endswith(".wrapper.so") else data)
    _rehash(broken)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="dlopen"):
        NeuronModelForCausalLM.from_pretrained(broken, trust_remote_code=True)
    gc.collect()
    assert list(scratch.iterdir()) == []

    model = NeuronModelForCausalLM.from_pretrained(tiny_aot_artifact)
    assert model.generate(PROMPT[:, :4], max_new_tokens=2, eos_token_id=None).shape == (1, 6)
    # The checked graph snapshots, then prefill and decode each extracted into a private directory.
    assert len(list(scratch.iterdir())) == 3
    del model
    gc.collect()
    assert list(scratch.iterdir()) == []


# ---- references to missing tensors, broken side files -------------------------------------------------
def test_an_alias_or_derived_constant_naming_a_missing_tensor_is_refused(tiny_artifact, tmp_path):
    root = _copy(tiny_artifact, tmp_path / "a")
    _edit(root, lambda d: d["weights"]["aliases"].update({"lm_head.weight": "no.such.tensor"}))
    with pytest.raises(ArtifactError, match=r"weights.aliases.lm_head.weight names 'no.such.tensor', which no weights"):
        NeuronModelForCausalLM.from_pretrained(root)
    root = _copy(tiny_artifact, tmp_path / "b")
    # (a torch-export artifact derives nothing: packed weights are torch-aot's CPU kernel, so add the entry)
    name = "lm_head.packed_weight"
    _edit(root, lambda d: d["weights"]["derived"].update(
        {name: {"op": "onednn_packed_linear", "source": "no.such.tensor", "args": {"batch_size": 1}}}))
    with pytest.raises(ArtifactError, match=f"weights.derived.{name} derives from 'no.such.tensor'"):
        NeuronModelForCausalLM.from_pretrained(root)


@pytest.mark.parametrize(("file", "attribute"), [("generation_config.json", "generation_config"),
                                                 ("config.json", "config")])
def test_a_broken_side_file_is_named(tiny_artifact, tmp_path, file, attribute):
    root = _copy(tiny_artifact, tmp_path / "a")
    model = NeuronModelForCausalLM.from_pretrained(root)
    (root / file).write_text('{"temperature": ')  # read lazily, on first access
    with pytest.raises(ValueError, match=rf"{root / file}: not a valid .* repair it, or delete it"):
        getattr(model, attribute)


# ---- saving never copies what lies outside ---------------------------------------------------------------
def test_save_pretrained_refuses_symlinks_to_outside_files(tiny_artifact, tmp_path):
    root = _copy(tiny_artifact, tmp_path / "a")
    secret = tmp_path / "secret.txt"
    secret.write_text("private key")
    os.symlink(secret, root / "notes.txt")
    model = NeuronModelForCausalLM.from_pretrained(root)
    with pytest.raises(ArtifactError, match=r"'notes.txt' points outside the artifact"):
        model.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / "notes.txt").exists()
    (root / "notes.txt").unlink()
    os.symlink(root / "config.json", root / "notes.txt")  # inside: copied as a file
    saved = model.save_pretrained(tmp_path / "saved")
    assert (saved / "notes.txt").read_bytes() == (root / "config.json").read_bytes()


# ---- ids and positions: what every caller (generate, Engine, vLLM runner) passes through ---------------
def test_the_runtime_refuses_ids_positions_and_slots_the_kernels_would_index_out_of_bounds(tiny_artifact):
    runtime = NeuronModelForCausalLM.from_pretrained(tiny_artifact).runtime
    long = lambda *v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    with pytest.raises(ValueError, match=r"prompt hold token id 160, outside this artifact's vocabulary \[0, 160\)"):
        runtime.prefill(long(1, 160, 3), slot=0)
    with pytest.raises(ValueError, match=r"token id -1"):
        runtime.prefill(long(1, -1), slot=0)
    with pytest.raises(ValueError, match=r"tokens hold token id 999"):
        runtime.decode(long(999, 1), long(3, 3))
    with pytest.raises(ValueError, match=r"positions \[48, 3\] must lie in \[0, 48\)"):
        runtime.decode(long(1, 1), long(48, 3))
    with pytest.raises(ValueError, match=r"positions \[-1\] must lie"):
        runtime.decode_slots([0], long(1), long(-1))
    with pytest.raises(ValueError, match=r"slots \[2\] must be within the compiled batch \(0..1\)"):
        runtime.decode_slots([2], long(1), long(3))
