"""Helpers shared by tests/export: the export shapes, compiled artifacts run graph by graph, and transformers'
eager model as the reference (tiny random checkpoints come from tests/support/tiny.py).

Everything numeric is compared with transformers, never with neuron-export's own eager module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import support.tiny
import torch

from neuron_cache import NeuronConfig
from neuron_export.backends import get_backend
from neuron_export.validate import load_constants

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


@dataclass
class CompiledArtifact:
    """The compiled graphs of an artifact, bound to one shared set of constants (weights + KV cache)."""

    root: Path
    config: NeuronConfig
    constants: dict[str, torch.Tensor]
    graphs: dict[str, Callable[..., list[torch.Tensor]]]

    @classmethod
    def open(cls, root: Path) -> CompiledArtifact:
        config = NeuronConfig.load(root)
        constants = load_constants(root, config)
        backend = get_backend(config.target.backend)
        graphs = {name: backend.load(root / g.file, constants) for name, g in config.graphs.items()}
        return cls(root=root, config=config, constants=constants, graphs=graphs)

    def reset(self) -> None:
        for spec in self.config.state:
            self.constants[spec.name].zero_()

    def prefill(self, prompt: list[int], slot: int, sampling: torch.Tensor | None = None,
                rand: float = 0.0, pad_id: int = 3) -> torch.Tensor:
        """One prompt into KV slot `slot`: logits (vocab,) at its last token, or the sampled token (scalar)."""
        n = len(prompt)
        bucket = min(b for b in self.config.context_buckets if b >= n)  # the smallest bucket that holds it
        ids = torch.full((1, bucket), pad_id, dtype=torch.long)
        ids[0, :n] = torch.tensor(prompt)
        extra = () if sampling is None else (sampling.view(1, 3).float(), torch.tensor([rand]))
        with torch.no_grad():
            out = self.graphs[f"context_encoding_{bucket}"](ids, torch.tensor([slot]), torch.tensor([n - 1]), *extra)
        return out[0][0]

    def decode(self, tokens: list[int], positions: list[int], sampling: torch.Tensor | None = None,
               rand: list[float] | None = None) -> torch.Tensor:
        """One token per slot at its own position: logits (batch, vocab), or tokens (batch,)."""
        ids = torch.tensor(tokens, dtype=torch.long).view(-1, 1)
        extra = () if sampling is None else (sampling.float(), torch.tensor(rand, dtype=torch.float32))
        with torch.no_grad():
            return self.graphs["token_generation"](ids, torch.tensor(positions, dtype=torch.long), *extra)[0]


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
