"""SentenceEncoder's end token for last-token pooling (decoder embedders such as Qwen3-Embedding), with fake
tokenizers shaped like Qwen's: its recipe ends every input with <|endoftext|> (the pad token, not eos)."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from neuron_infer.sentence_encode import SentenceEncoder


class FakeTokenizer:
    eos_token_id, model_max_length = 9, 1 << 30
    vocab = {"<|endoftext|>": 8, "<|im_end|>": 9, "a": 1, "b": 2}

    def __init__(self, appends: int | None):
        self.appends = appends

    def get_vocab(self):
        return self.vocab

    def convert_tokens_to_ids(self, token):
        return self.vocab[token]

    def __call__(self, texts, truncation=False, max_length=None, **_):
        one = isinstance(texts, str)
        end = [self.appends] if self.appends else []
        room = max_length - len(end) if truncation else None  # as transformers: the special tokens survive truncation
        rows = [[self.vocab[c] for c in t.split()][:room] + end for t in ([texts] if one else texts)]
        return {"input_ids": rows[0] if one else rows}


def encoder(mode: str, tokenizer: FakeTokenizer, root: Path) -> SentenceEncoder:
    enc = SentenceEncoder()
    enc.runtime = SimpleNamespace(config=SimpleNamespace(pooling=SimpleNamespace(mode=mode)), max_length=4, root=root)
    enc._tokenizer = tokenizer
    return enc


@pytest.mark.parametrize(("mode", "appends", "want", "truncated"), [
    ("last_token", None, [[1, 2, 8], [1, 2, 1, 8]], 1),  # appended; the long input truncated to make room
    ("last_token", 8, [[1, 2, 8], [1, 2, 1, 8]], 1),  # the tokenizer appends it itself
    ("mean", None, [[1, 2], [1, 2, 1, 2]], 0),
])
def test_end_token_for_last_token_pooling(tmp_path, mode, appends, want, truncated):
    enc = encoder(mode, FakeTokenizer(appends), tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert enc._token_ids(["a b", "a b a b"], truncate=True) == want
    assert [str(w.message) for w in caught] == ["encode(): 1 of 2 inputs are longer than max_seq_length=4 tokens "
                                                "and were truncated"] * truncated
