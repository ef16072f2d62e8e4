"""Chat SFT data: JSONL of {"messages": [...]}, chat-template tokenisation with completion-only
labels, right-padding collation, and a resumable, data-parallel-aware batch order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neuron_train.parallel.loss import IGNORE_INDEX

Example = dict[str, list[int]]


def load_chat_jsonl(path: str | Path) -> list[list[dict[str, str]]]:
    conversations = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        messages = row.get("messages")
        if not isinstance(messages, list) or not any(m.get("role") == "assistant" for m in messages):
            raise ValueError(f"{path}:{n}: 'messages' must be a list with at least one assistant turn, got {row!r:.200}")
        conversations.append(messages)
    return conversations


def _ids(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_chat(messages: list[dict[str, str]], tokenizer: Any, max_length: int) -> Example:
    """input_ids of the whole rendered conversation; labels keep only assistant replies (the rest -100).

    Each assistant span is found by rendering the conversation up to that turn with the generation
    prompt (start of the span) and including it (end); this needs a template whose renderings are
    prefixes of one another, which is checked rather than assumed.
    """
    full = _ids(tokenizer, messages, generation_prompt=False)
    labels = [IGNORE_INDEX] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_ids(tokenizer, messages[:i], generation_prompt=True))
        upto = _ids(tokenizer, messages[: i + 1], generation_prompt=False)
        if upto != full[: len(upto)]:
            raise ValueError(
                "the chat template does not render conversations as prefixes of one another, so assistant "
                "spans cannot be located; use a template without history-dependent rewriting."
            )
        labels[start : len(upto)] = full[start : len(upto)]
    return {"input_ids": full[:max_length], "labels": labels[:max_length]}


@dataclass(kw_only=True)
class Collator:
    """Right-pads a list of examples. Causal attention never lets a real token see a right pad, and
    pads carry label -100, so no attention mask reaches the model."""

    pad_token_id: int
    pad_to_multiple_of: int = 1  # tensor_parallel_size under sequence parallelism

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        m = self.pad_to_multiple_of
        length = max(len(e["input_ids"]) for e in examples)
        length = -(-length // m) * m
        ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(examples), length), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            labels[i, :n] = torch.tensor(e["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class BatchOrder:
    """Which examples form each micro-batch on this data-parallel rank, resumable exactly.

    Every epoch is a permutation drawn from (seed, epoch), so the order never depends on RNG state.
    A global micro-batch is dp * batch_size consecutive indices; rank r takes slice r. The last
    incomplete global batch of an epoch is dropped so every rank sees the same number of steps.
    """

    def __init__(self, num_examples: int, *, batch_size: int, dp: int, dp_rank: int, seed: int) -> None:
        self.n, self.bs, self.dp, self.dp_rank, self.seed = num_examples, batch_size, dp, dp_rank, seed
        self.per_epoch = num_examples // (batch_size * dp)
        if self.per_epoch == 0:
            raise ValueError(
                f"dataset of {num_examples} examples is smaller than one global batch "
                f"(per_device_train_batch_size={batch_size} x data-parallel size {dp}); lower the batch size."
            )
        self.epoch, self.position = 0, 0

    def __iter__(self) -> Iterator[list[int]]:
        return self

    def __next__(self) -> list[int]:
        if self.position >= self.per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        start = self.position * self.bs * self.dp + self.dp_rank * self.bs
        self.position += 1
        return perm[start : start + self.bs].tolist()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
