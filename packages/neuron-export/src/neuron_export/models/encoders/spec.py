"""Typed description of a static-shape encoder (BERT-like): everything that changes its graph."""

from __future__ import annotations

from dataclasses import dataclass

TASKS = ("feature-extraction", "fill-mask", "text-classification", "token-classification", "question-answering")
POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len_tokens", "last_token")


@dataclass(kw_only=True, slots=True)
class EncoderArch:
    """Read from a Hugging Face config by a family's `arch()`; `model.py` reads nothing else."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    layer_norm_eps: float
    hidden_act: str
    max_position_embeddings: int
    type_vocab_size: int  # > 1: token_type_ids is a graph input; 1: row 0 is added; 0: no table
    position_offset: int = 0  # roberta/mpnet: padding_idx + 1, with padding-aware position ids
    pad_token_id: int = 0  # the id whose positions stay padding_idx (padding-aware position ids only)
    relative_attention_num_buckets: int = 0  # mpnet: T5-style relative position bias shared by all layers
    num_labels: int = 0  # text/token classification heads
    head_act: str = "gelu"  # fill-mask: the transform's activation before its LayerNorm
    classifier_act: str = "tanh"  # text-classification: the CLS transform (bert pooler, roberta dense: tanh)
    tie_word_embeddings: bool = True  # fill-mask: the decoder is the word embedding table

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_heads})"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_sequence_length(self) -> int:
        """The longest sequence the position table holds (roberta's first rows are padding positions)."""
        return self.max_position_embeddings - self.position_offset
