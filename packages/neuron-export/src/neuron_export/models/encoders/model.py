"""The static-shape encoder every encoder family instantiates: embeddings, post-LayerNorm layers, a task head.

One graph per (rows, seq): inputs input_ids, attention_mask (and token_type_ids when the family has token
types), int64 (rows, seq), padded on the right; rows the runtime adds carry an all-zero attention_mask. The
key-padding mask is additive and finite (finfo.min, as transformers), so such rows come out finite and real
rows are untouched by padding. Every output is float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from neuron_export.models.encoders.spec import POOLING_MODES, TASKS, EncoderArch

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "tanh": torch.tanh,
}

OUTPUTS = {
    "feature-extraction": ["last_hidden_state"],
    "fill-mask": ["logits"],
    "text-classification": ["logits"],
    "token-classification": ["logits"],
    "question-answering": ["start_logits", "end_logits"],
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation '{name}' is not supported; supported: {', '.join(ACTIVATIONS)}") from None


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """hidden (rows, seq, h), attention_mask (rows, seq) -> (rows, h), as sentence-transformers' Pooling does
    on right-padded rows (max masks with -1e9 instead of -inf: an all-padding row stays finite)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
    if mode == "last_token":
        last = (attention_mask.sum(1) - 1).clamp(min=0)  # (rows,)
        picked = torch.gather(hidden * mask, 1, last.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1]))
        return picked.squeeze(1)
    total = (hidden * mask).sum(1)
    count = mask.sum(1).clamp(min=1e-9)
    return total / (count if mode == "mean" else count.sqrt())


def check_task(task: str, pooling: str | None) -> None:
    if task not in TASKS:
        raise ValueError(f"task '{task}' is not an encoder task; supported: {', '.join(TASKS)}")
    if pooling is not None and (task != "feature-extraction" or pooling not in POOLING_MODES):
        raise ValueError(
            f"pooling '{pooling}' with task '{task}': pooling applies to feature-extraction only, one of "
            f"{', '.join(POOLING_MODES)}; pass pooling=None otherwise"
        )


def key_padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(rows, seq) 0/1 -> additive (rows, 1, 1, seq): 0 where attended, finfo.min where padding."""
    return ((1 - attention_mask.to(dtype)) * torch.finfo(dtype).min)[:, None, None, :]


def relative_position_bucket(relative: torch.Tensor, num_buckets: int, max_distance: int = 128) -> torch.Tensor:
    """MPNet's (T5's bidirectional) bucketing of key - query offsets."""
    n = -relative
    half = num_buckets // 2
    ret = (n < 0).long() * half
    n = n.abs()
    max_exact = half // 2
    # clamp: log(0) would be cast to long; those entries take the exact branch anyway
    large = max_exact + (torch.log(n.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
                         * (half - max_exact)).long()
    return ret + torch.where(n < max_exact, n, large.clamp(max=half - 1))


class Embeddings(nn.Module):
    def __init__(self, arch: EncoderArch):
        super().__init__()
        self.arch = arch
        self.word = nn.Embedding(arch.vocab_size, arch.hidden_size)
        self.position = nn.Embedding(arch.max_position_embeddings, arch.hidden_size)
        if arch.type_vocab_size:
            self.token_type = nn.Embedding(arch.type_vocab_size, arch.hidden_size)
        self.norm = nn.LayerNorm(arch.hidden_size, eps=arch.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        a = self.arch
        if a.position_offset:  # padding-aware: real tokens count from padding_idx + 1, padding sits at padding_idx
            real = input_ids.ne(a.pad_token_id).long()
            positions = torch.cumsum(real, dim=1) * real + (a.position_offset - 1)
        else:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        x = self.word(input_ids) + self.position(positions)
        if token_type_ids is not None:
            x = x + self.token_type(token_type_ids)
        elif a.type_vocab_size:  # roberta: one token type, row 0 for every token
            x = x + self.token_type.weight[0]
        return self.norm(x)


class EncoderLayer(nn.Module):
    """Post-LayerNorm: x = norm(x + attn(x)); x = norm(x + ffn(x))."""

    def __init__(self, arch: EncoderArch):
        super().__init__()
        h = arch.hidden_size
        self.num_heads = arch.num_heads
        self.qkv = nn.Linear(h, 3 * h)
        self.out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=arch.layer_norm_eps)
        self.up = nn.Linear(h, arch.intermediate_size)
        self.down = nn.Linear(arch.intermediate_size, h)
        self.ffn_norm = nn.LayerNorm(h, eps=arch.layer_norm_eps)
        self.act = activation(arch.hidden_act)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x (B, T, h); bias additive, broadcastable to (B, heads, T, T)."""
        B, T, h = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, h // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, heads, T, hd)
        x = self.attn_norm(x + self.out(out.transpose(1, 2).reshape(B, T, h)))
        return self.ffn_norm(x + self.down(self.act(self.up(x))))


class MaskedLMHead(nn.Module):
    def __init__(self, arch: EncoderArch):
        super().__init__()
        self.dense = nn.Linear(arch.hidden_size, arch.hidden_size)
        self.act = activation(arch.head_act)
        self.norm = nn.LayerNorm(arch.hidden_size, eps=arch.layer_norm_eps)
        self.decoder = nn.Linear(arch.hidden_size, arch.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(arch.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(x)))) + self.bias


class SequenceClassifier(nn.Module):
    """The first token through dense + act (bert: the pooler) then the label projection."""

    def __init__(self, arch: EncoderArch):
        super().__init__()
        self.dense = nn.Linear(arch.hidden_size, arch.hidden_size)
        self.act = activation(arch.classifier_act)
        self.out = nn.Linear(arch.hidden_size, arch.num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.dense(x[:, 0])))


class EncoderModel(nn.Module):
    """`family` (bert.py & co.) is kept for the checkpoint plan; the graph reads `arch`, `task` and `pooling`.
    Parameters are created in `dtype` (a torch dtype or its name)."""

    tp = 1

    def __init__(self, family: type, arch: EncoderArch, task: str, pooling: str | None = None,
                 dtype: torch.dtype | str = torch.float32):
        super().__init__()
        check_task(task, pooling)
        self.family, self.arch, self.task, self.pooling = family, arch, task, pooling
        self.embeddings = Embeddings(arch)
        self.layers = nn.ModuleList(EncoderLayer(arch) for _ in range(arch.num_layers))
        if arch.relative_attention_num_buckets:
            self.relative_attention_bias = nn.Embedding(arch.relative_attention_num_buckets, arch.num_heads)
        if task == "fill-mask":
            self.mlm = MaskedLMHead(arch)
            self.tie_weights()
        elif task == "text-classification":
            self.classifier = SequenceClassifier(arch)
        elif task == "token-classification":
            self.token_classifier = nn.Linear(arch.hidden_size, arch.num_labels)
        elif task == "question-answering":
            self.qa_outputs = nn.Linear(arch.hidden_size, 2)
        self.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)

    def tie_weights(self) -> None:
        """One tensor for the word embeddings and the MLM decoder (to_empty unties them: call again)."""
        if self.task == "fill-mask" and self.arch.tie_word_embeddings:
            self.mlm.decoder.weight = self.embeddings.word.weight

    # ---- the graph ---------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        hidden = self.encode(input_ids, attention_mask, token_type_ids)
        if self.task == "feature-extraction":
            if self.pooling is None:
                return (hidden.float(),)
            return hidden.float(), pool(hidden, attention_mask, self.pooling).float()
        if self.task == "fill-mask":
            return (self.mlm(hidden).float(),)
        if self.task == "text-classification":
            return (self.classifier(hidden).float(),)
        if self.task == "token-classification":
            return (self.token_classifier(hidden).float(),)
        start, end = self.qa_outputs(hidden).float().unbind(-1)
        return start, end

    def encode(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """-> last_hidden_state (rows, seq, hidden) in the model dtype."""
        x = self.embeddings(input_ids, token_type_ids)
        bias = key_padding_bias(attention_mask, x.dtype)
        if self.arch.relative_attention_num_buckets:  # mpnet: the same (1, heads, T, T) bias in every layer
            pos = torch.arange(input_ids.shape[1], device=input_ids.device)
            # transformers buckets into 32 whatever relative_attention_num_buckets says (that only sizes the table)
            buckets = relative_position_bucket(pos[None, :] - pos[:, None], 32)
            bias = bias + self.relative_attention_bias(buckets).permute(2, 0, 1)[None]
        for layer in self.layers:
            x = layer(x, bias)
        return x

    # ---- the calling convention the export pipeline and the runtime read ---------------------
    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask"] + (["token_type_ids"] if self.arch.type_vocab_size > 1 else [])

    def output_names(self) -> list[str]:
        names = OUTPUTS[self.task]
        return [*names, "sentence_embedding"] if self.pooling is not None else list(names)

    def example_inputs(self, rows: int, seq: int) -> tuple[torch.Tensor, ...]:
        ids = torch.zeros(rows, seq, dtype=torch.long)
        mask = torch.ones(rows, seq, dtype=torch.long)
        return (ids, mask, torch.zeros(rows, seq, dtype=torch.long)) if len(self.input_names()) == 3 else (ids, mask)

    def output_specs(self, rows: int, seq: int) -> list[dict]:
        a = self.arch
        shapes = {
            "last_hidden_state": [rows, seq, a.hidden_size],
            "sentence_embedding": [rows, a.hidden_size],
            "start_logits": [rows, seq],
            "end_logits": [rows, seq],
            "logits": {"fill-mask": [rows, seq, a.vocab_size], "text-classification": [rows, a.num_labels],
                       "token-classification": [rows, seq, a.num_labels]}.get(self.task),
        }
        return [{"name": n, "shape": shapes[n], "dtype": "float32"} for n in self.output_names()]

    def state_names(self) -> list[str]:
        return []

    def reset_state(self) -> None:
        """No state: an encoder graph is a pure function of its inputs and weights."""

    def rank_buffers(self, rank: int) -> dict[str, torch.Tensor]:
        return {}
