"""EncoderRuntime: an encoder artifact's graphs (one per batch bucket and sequence bucket) bound to its weights.

One call encodes any number of rows of any length up to the artifact's longest input, padded left or right:
`encoder_batching` turns them into graph-sized chunks and back. No state: calls are independent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from neuron_cache import Artifact, NeuronConfig
from neuron_cache.config import ENCODER_TASKS
from neuron_cache.signature import GraphSignature
from neuron_infer.encoder_batching import is_per_token, run_batched
from neuron_infer.runtime import BoundArtifact, check_host

# Graph constants that hold the token embedding, when a graph's signature does not record vocab_size, and the
# token-type (segment) embedding.
# (transformers' names, and neuron-export's encoder modules': embeddings.word / embeddings.token_type)
EMBEDDING_SUFFIXES = ("word_embeddings.weight", "embed_tokens.weight", "embeddings.word.weight")
TOKEN_TYPE_SUFFIXES = ("token_type_embeddings.weight", "embeddings.token_type.weight")


def check_encoder(config: NeuronConfig, root: Path) -> None:
    """Refuse artifacts an EncoderRuntime cannot run, naming what differs and the fix."""
    if not config.is_encoder:
        raise ValueError(f"{root} holds a '{config.task}' artifact; EncoderRuntime runs the encoder tasks "
                         f"({', '.join(ENCODER_TASKS)}). Open it with NeuronModelForCausalLM (or DecoderRuntime).")
    check_host(config, root)
    if config.tensor_parallel_size != 1:
        raise RuntimeError(f"{root}: tensor_parallel_size={config.tensor_parallel_size}; encoder artifacts run on "
                           "one rank only. Re-export with --tensor_parallel_size 1.")


class EncoderRuntime(BoundArtifact):
    """`run` encodes a batch; `embed` returns sentence embeddings (artifacts with pooling)."""

    check = staticmethod(check_encoder)

    def __init__(self, artifact: Artifact, *, trust_remote_code: bool = False, origin: str | None = None):
        super().__init__(artifact, trust_remote_code=trust_remote_code, origin=origin)
        # The smallest graph, loaded now: its signature (not the editable config) says what every graph takes.
        smallest = self._graph(self.config.encoder_graph(1, 1))
        self.input_names: list[str] = list(smallest.input_names)
        self.output_names: list[str] = list(smallest.output_names)
        self.vocab_size = _vocab_size(smallest.signature)
        self.type_vocab_size = _type_vocab_size(smallest.signature)
        self.pad_token_id = _pad_token_id(self.root)
        if self.vocab_size is not None and self.pad_token_id >= self.vocab_size:
            self.pad_token_id = 0  # config.json is editable: its pad id must not index past the embedding either

    @property
    def max_length(self) -> int:
        return self.config.max_context_length

    @property
    def max_rows(self) -> int:
        """The most rows one graph call takes (a larger batch runs in several)."""
        return self.config.encoder_batch_buckets[-1]

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
            token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """(n, L) int token ids, padded left or right -> the graphs' outputs for n rows; per-token outputs have L
        columns, at the caller's positions (0 at padding)."""
        input_ids, attention_mask, token_type_ids = self._check_inputs(input_ids, attention_mask, token_type_ids)
        with torch.no_grad():
            return run_batched(
                self._run_graph, input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                input_names=self.input_names, per_token=lambda name: is_per_token(self.config.task, name),
                batch_buckets=self.config.encoder_batch_buckets, context_buckets=self.config.context_buckets,
                pad_id=self.pad_token_id)

    def _run_graph(self, rows: int, bucket: int, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        graph = self._graph(self.config.graph_for("encoder", bucket=bucket, rows=rows))
        return self._to_host(graph(**self._to_device(inputs)))

    def embed(self, token_ids: list[list[int]], normalize: bool | None = None) -> torch.Tensor:
        """Sentence embeddings (n, hidden) float32 of unpadded token id lists; `normalize` None: the model's own
        default (`pooling.normalize`)."""
        if self.config.pooling is None or "sentence_embedding" not in self.output_names:
            raise ValueError(f"{self.root} ('{self.config.task}', pooling=None) has no sentence_embedding output; "
                             "re-export a sentence-transformers checkpoint (or pass --pooling mean) for embeddings, "
                             "or read last_hidden_state from run()")
        if not token_ids or any(len(row) == 0 for row in token_ids):
            raise ValueError("embed() needs at least one row, and every row at least one token id")
        width = max(len(row) for row in token_ids)
        ids = torch.full((len(token_ids), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(token_ids):
            ids[i, :len(row)] = torch.as_tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        embeddings = self.run(ids, mask)["sentence_embedding"].float()
        if self.config.pooling.normalize if normalize is None else normalize:
            embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=-1)
        return embeddings

    # ---- input checks --------------------------------------------------------------------------
    def _check_inputs(self, input_ids: Any, attention_mask: Any, token_type_ids: Any
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(n, L) int64 host tensors, refused by name when the compiled graphs could not take them safely."""
        ids = _as_rows(input_ids, "input_ids")
        n, width = ids.shape
        mask = torch.ones_like(ids) if attention_mask is None else _as_rows(attention_mask, "attention_mask")
        if mask.shape != ids.shape or ((mask != 0) & (mask != 1)).any():
            raise ValueError(f"attention_mask must be 0/1 of input_ids' shape {list(ids.shape)}, got "
                             f"{list(mask.shape)}")
        if n == 0 or width == 0:
            raise ValueError(f"input_ids {list(ids.shape)}: need at least one row of at least one token")
        empty = (mask.sum(1) == 0).nonzero().view(-1)
        if empty.numel():
            raise ValueError(f"row {int(empty[0])} of attention_mask is all 0: every row needs at least one token")
        longest = int(mask.sum(1).max())
        if longest > self.max_length:
            raise ValueError(
                f"an input of {longest} tokens exceeds max_length={self.max_length} of the artifact {self.root} "
                "(its sequence_length). Truncate the input (tokenizer(..., truncation=True, max_length="
                f"{self.max_length}); pipelines: truncation=True), or re-export with a larger --sequence_length.")
        real = ids[mask.bool()]
        if self.vocab_size is not None and real.numel() and (int(real.min()) < 0 or int(real.max()) >= self.vocab_size):
            bad = real[(real < 0) | (real >= self.vocab_size)][0]
            raise ValueError(f"input_ids hold token id {int(bad)}, outside this artifact's vocabulary "
                             f"[0, {self.vocab_size})")
        if token_type_ids is not None:
            token_type_ids = _as_rows(token_type_ids, "token_type_ids")
            if token_type_ids.shape != ids.shape:
                raise ValueError(f"token_type_ids {list(token_type_ids.shape)} must have input_ids' shape "
                                 f"{list(ids.shape)}")
            if "token_type_ids" not in self.input_names:
                if token_type_ids[mask.bool()].any():
                    raise ValueError(f"{self.root}: this model takes no token_type_ids, but they are not all 0; "
                                     "drop them (its tokenizer does not produce them)")
                token_type_ids = None
            elif int(token_type_ids.min()) < 0 or int(token_type_ids.max()) >= self.type_vocab_size:
                # The compiled embedding indexes its token-type table without bounds checks.
                raise ValueError(f"token_type_ids must lie in [0, {self.type_vocab_size}) (this model's segments), "
                                 f"got {int(token_type_ids.min())}..{int(token_type_ids.max())}")
        return ids, mask, token_type_ids


def _as_rows(value: Any, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value).cpu()
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 2 or tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(f"{name} must be integer (n, L), got {list(tensor.shape)} {tensor.dtype}")
    return tensor.long()


def _vocab_size(signature: GraphSignature) -> int | None:
    """The vocabulary the compiled embedding holds: ids outside it must never reach the graph (no bounds checks)."""
    vocab = signature.static.get("vocab_size")
    if vocab is not None:
        return int(vocab)
    for name, spec in signature.constants.items():
        if name.endswith(EMBEDDING_SUFFIXES):
            return int(spec.shape[0])
    return None


def _type_vocab_size(signature: GraphSignature) -> int:
    """How many segment ids the compiled token-type table holds (2, BERT's, when no constant says)."""
    return next((int(spec.shape[0]) for name, spec in signature.constants.items() if name.endswith(TOKEN_TYPE_SUFFIXES)),
                2)


def _pad_token_id(root: Path) -> int:
    """The checkpoint's pad token (config.json), else 0: what padding rows and columns hold."""
    try:
        pad = json.loads((root / "config.json").read_text()).get("pad_token_id")
    except (OSError, ValueError, AttributeError):
        pad = None
    return pad if isinstance(pad, int) and pad >= 0 else 0
