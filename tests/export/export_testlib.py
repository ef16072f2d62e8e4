"""Helpers shared by tests/export: the export shapes, artifacts opened with neuron-infer's runtime, and
transformers' eager model as the reference (tiny random checkpoints come from tests/support/tiny.py).

Everything numeric is compared with transformers, never with neuron-export's own eager module.
"""

from __future__ import annotations

import functools
from pathlib import Path

import support.tiny
import torch

from neuron_cache import Artifact
from neuron_infer.runtime import DecoderRuntime, load_runtime

SEQUENCE_LENGTH = 48
BUCKETS = [16, 32]
BATCH = 2
LOGIT_RTOL = 1e-4  # max |ours - transformers| allowed, per unit of the largest reference logit
# Fields every tiny config shares: an odd vocabulary, 2 layers, special tokens inside the vocabulary.
COMMON_CONFIG = dict(vocab_size=151, num_hidden_layers=2, max_position_embeddings=64, rms_norm_eps=1e-5,
                     pad_token_id=None, bos_token_id=1, eos_token_id=2)


# export() with the shapes every test here uses, validation off (the tests do their own), and the compile cache off:
# every graph is traced from the code under test, never served from an earlier export. Keywords override these.
export_tiny = functools.partial(support.tiny.export_tiny, batch_size=BATCH, sequence_length=SEQUENCE_LENGTH,
                                max_context_length=BUCKETS[-1], context_buckets=list(BUCKETS), backend="torch-export",
                                disable_validation=True, disable_neuron_cache=True)


def open_runtime(root: Path) -> DecoderRuntime:
    """neuron-infer's runtime over an exported artifact: tests run graphs the way every consumer does."""
    return load_runtime(Artifact.open(root))


def reset_kv(runtime: DecoderRuntime) -> None:
    """Zero the KV cache (the state every graph of the runtime shares), as a fresh load would have it."""
    for spec in runtime.config.state:
        runtime.constants[spec.name].zero_()


def greedy_reference(hf_model: torch.nn.Module, prompt: list[int], steps: int) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy continuation (steps + 1 tokens) and the logits that chose each: (steps + 1, vocab)."""
    seq, logits = list(prompt), []
    with torch.no_grad():
        for _ in range(steps + 1):
            last = hf_model(torch.tensor([seq])).logits[0, -1].float()
            logits.append(last)
            seq.append(int(last.argmax()))
    return seq[len(prompt):], torch.stack(logits)


def assert_logits_close(ours: torch.Tensor, ref: torch.Tensor, what: str, rtol: float = LOGIT_RTOL) -> float:
    """max |ours - ref| <= rtol * max(1, max |ref|); returns the difference."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != transformers' {tuple(ref.shape)}"
    tol = rtol * max(1.0, ref.abs().max().item())
    diff = (ours.float() - ref.float()).abs().max().item()
    assert diff <= tol, f"{what}: max |ours - transformers| = {diff:.3g} > {tol:.3g}"
    return diff


def prompt_ids(length: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()
