"""Fixtures shared by tests/export (helpers live in export_testlib.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from export_testlib import BUCKETS, COMMON_CONFIG
from support.tiny import save_tiny_checkpoint


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; with other processes on the two cores, two OpenMP threads
    spin-wait on each other and every small op becomes ~100x slower (measured: 10 s vs 0.08 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def save_tiny_tokenizer(directory: Path, vocab_size: int) -> None:
    """A word-level tokenizer built offline ("w0 w1 ..." -> ids), saved as tokenizer.json + tokenizer_config.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(directory)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny random llama checkpoint (GQA 6/2, head_dim 24 != 72/6) with a tokenizer and a generation config."""
    from transformers import GenerationConfig, LlamaConfig

    directory = tmp_path_factory.mktemp("tiny_llama")
    config = LlamaConfig(**COMMON_CONFIG, hidden_size=72, intermediate_size=136, num_attention_heads=6,
                         num_key_value_heads=2, head_dim=24, tie_word_embeddings=True)
    save_tiny_checkpoint(config, directory, seed=42)
    save_tiny_tokenizer(directory, config.vocab_size)
    GenerationConfig(bos_token_id=1, eos_token_id=2, do_sample=True, temperature=0.7, top_k=17).save_pretrained(directory)
    assert BUCKETS[-1] <= config.max_position_embeddings
    return directory
