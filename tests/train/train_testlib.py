"""Helpers for tests/train: launch torchrun workers (2 gloo processes), run commands, judge chat loss.

A module of its own, not conftest.py: `from conftest import ...` resolves to whichever conftest pytest
imported first (tests/vllm has one too), so running tests/train beside tests/vllm broke the imports.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKERS = Path(__file__).parent / "workers"
DATA = Path(__file__).resolve().parents[2] / "packages/neuron-train/examples/data/chat_small.jsonl"


def run_checked(cmd: list[str], what: str, timeout: int) -> subprocess.CompletedProcess:
    """Run a command offline with one OpenMP thread; fail the test with its output on error or timeout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{what} timed out after {timeout}s\n{(e.stdout or '')[-3000:]}\n{(e.stderr or '')[-3000:]}")
    if proc.returncode != 0:
        pytest.fail(f"{what} exited {proc.returncode}: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def torchrun(script: str, out: Path, *args: str, nproc: int = 2, timeout: int = 180) -> subprocess.CompletedProcess:
    """Run workers/<script> under torchrun; fail the test with the workers' output on error or timeout."""
    exe = Path(sys.executable).with_name("torchrun")
    cmd = [str(exe), "--standalone", f"--nproc_per_node={nproc}", str(WORKERS / script), "--out", str(out), *args]
    return run_checked(cmd, script, timeout)


def chat_loss(model, tok, n: int, max_length: int) -> float:
    """Token-weighted loss on the assistant replies of the first n shipped conversations, computed by `model`
    (a transformers/PEFT model: the judge is never our own code)."""
    import torch

    from neuron_train.training.data import load_chat_jsonl, tokenize_chat

    total, count = 0.0, 0
    with torch.no_grad():
        for messages in load_chat_jsonl(DATA)[:n]:
            ex = tokenize_chat(messages, tok, max_length=max_length)
            labelled = sum(1 for x in ex["labels"][1:] if x != -100)
            out = model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]]))
            total, count = total + out.loss.item() * labelled, count + labelled
    return total / count
