"""Graphs compiled in worker processes (compile_worker.py): same graphs as in-process, failures named, nothing left.

torch-aot compiles from the model's shapes in `python -m neuron_export.compile_worker` processes, several at once
and while the checkpoint loads. These tests check the tokens of both paths against transformers, that a worker's
failure reaches the caller with the graph's name and cause, and that a failed export (a worker's or the
checkpoint's) leaves no worker process and no temporary directory behind.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest
import torch
from export_testlib import COMMON_CONFIG, export_tiny, greedy_reference, open_runtime, prompt_ids
from support.procs import children_of
from support.tiny import save_tiny_checkpoint

from neuron_cache import NeuronConfig
from neuron_export.errors import ExportError

AOT = dict(backend="torch-aot", batch_size=1, context_buckets=[16], max_context_length=16, decode_batches=[])
PROMPT = prompt_ids(9, COMMON_CONFIG["vocab_size"], seed=4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import transformers

    directory = tmp_path_factory.mktemp("workers") / "ckpt"
    config = transformers.LlamaConfig(**{**COMMON_CONFIG, "hidden_size": 32, "intermediate_size": 48,
                                         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8})
    return directory, save_tiny_checkpoint(config, directory)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """tempfile's directory for this test alone, so that what the export leaves there can be listed."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def compile_workers_alive() -> list[int]:
    def is_worker(pid: int) -> bool:
        try:
            return b"neuron_export.compile_worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    return [pid for pid in children_of(os.getpid()) if is_worker(pid)]


def greedy_tokens(root: Path, steps: int = 5, chunked: bool = False) -> list[int]:
    runtime = open_runtime(root)
    prompt = torch.tensor(PROMPT)
    first = runtime.prefill_chunk(prompt, 0, 0)[-1] if chunked else runtime.prefill(prompt, slot=0)
    tokens = [int(first.argmax())]
    for step in range(steps):
        tokens.append(int(runtime.decode(torch.tensor([tokens[-1]]), torch.tensor([len(PROMPT) + step])).argmax()))
    return tokens


@pytest.mark.parametrize("workers", [2, 0], ids=["two-workers", "in-process"])
def test_both_paths_give_transformers_tokens(checkpoint, tmp_path, workers):
    directory, hf_model = checkpoint
    root = export_tiny(directory, tmp_path / "art", compile_workers=workers, **AOT)
    assert set(NeuronConfig.load(root).graphs) == {"context_encoding_16", "token_generation", "chunked_prefill_16"}
    expected, _ = greedy_reference(hf_model, PROMPT, steps=5)
    assert greedy_tokens(tmp_path / "art") == expected
    assert greedy_tokens(tmp_path / "art", chunked=True) == expected  # an AOTInductor chunk graph


def test_a_worker_failure_names_the_graph_and_leaves_nothing(checkpoint, tmp_path, private_tmp):
    directory, _ = checkpoint
    with pytest.raises(ExportError, match=r"compiling graph (context_encoding_16|token_generation) failed.*"
                                          r"no_such_inductor_option"):
        export_tiny(directory, tmp_path / "art", compile_workers=2, flags={"no_such_inductor_option": 1}, **AOT)
    assert not (tmp_path / "art").exists()
    assert compile_workers_alive() == []
    assert [p.name for p in private_tmp.iterdir() if p.name.startswith("neuron-export-workers-")] == []


def test_a_checkpoint_failure_stops_the_workers(checkpoint, tmp_path, private_tmp):
    directory, _ = checkpoint
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in directory.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a truncated weights file: loading fails, compiling would not
    started = time.perf_counter()
    with pytest.raises(Exception) as caught:
        export_tiny(broken, tmp_path / "art", compile_workers=2, **AOT)
    assert "compiling graph" not in str(caught.value), "the checkpoint's error, not a stopped worker's"
    # The workers were killed, not waited for (one tiny compile takes ~10 s).
    assert time.perf_counter() - started < 30
    assert compile_workers_alive() == []
    assert [p.name for p in private_tmp.iterdir() if p.name.startswith("neuron-export-workers-")] == []


def test_negative_workers_are_refused(checkpoint, tmp_path):
    with pytest.raises(ExportError, match="compile_workers = -1: give 0"):
        export_tiny(checkpoint[0], tmp_path / "art", compile_workers=-1, **AOT)
