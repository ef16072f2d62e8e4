"""Token-generation graphs bucketed by KV length (`kv_buckets`), against transformers.

A batch-2 artifact with a 48-position cache and KV buckets 16 and 32, for the full batch and the rows-1
graph: one sequence decodes from inside the first bucket across both boundaries into the whole-cache
graph, and every logit is compared with transformers' eager model. The runtime must pick the smallest
bucket holding every live position (a graph too small would drop context and change the logits; the
spy also checks the choice itself), and one graph with a sliding window checks the masks of a bucket.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from export_testlib import (
    COMMON_CONFIG,
    SEQUENCE_LENGTH,
    assert_logits_close,
    export_tiny,
    greedy_reference,
    open_runtime,
    prompt_ids,
)
from support.tiny import save_tiny_checkpoint

from neuron_cache import NeuronConfig
from neuron_export.errors import ShapeError
from neuron_export.export import default_kv_buckets

CONFIG = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              tie_word_embeddings=True)
KV = [16, 32]
PROMPT = prompt_ids(12, COMMON_CONFIG["vocab_size"], seed=21)
STEPS = SEQUENCE_LENGTH - len(PROMPT) - 2  # crosses 16 and 32, ends in the whole-cache graph


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kv")
    hf_model = save_tiny_checkpoint(transformers.LlamaConfig(**{**COMMON_CONFIG, **CONFIG}), root / "ckpt")
    return hf_model, export_tiny(root / "ckpt", root / "art", kv_buckets=KV, decode_batches=[1])


def spy(runtime) -> list[str]:
    """Record the name of every token-generation graph the runtime runs."""
    chosen, pick = [], runtime.decode_graph

    def decode_graph(positions, rows=None):
        graph = pick(positions, rows)
        name = "token_generation" if graph is runtime._decode else next(
            n for n, g in runtime._graphs.items() if g is graph)
        chosen.append(name)
        return graph

    runtime.decode_graph = decode_graph
    return chosen


def test_kv_graphs_are_in_the_contract(setup):
    config = NeuronConfig.load(setup[1])
    decode = {n: (g.bucket, g.rows) for n, g in config.graphs.items() if g.role == "token_generation"}
    assert decode == {"token_generation_kv16": (16, None), "token_generation_kv32": (32, None),
                      "token_generation": (None, None), "token_generation_kv16_rows1": (16, 1),
                      "token_generation_kv32_rows1": (32, 1), "token_generation_rows1": (None, 1)}
    assert config.kv_buckets == KV
    assert [config.kv_bucket_for(n) for n in (1, 16, 17, 32, 33)] == [16, 16, 32, 32, None]


@pytest.mark.parametrize("rows", [None, 1], ids=["full-batch", "rows1"])
def test_decode_across_kv_buckets_matches_transformers(setup, rows):
    hf_model, art = setup
    runtime = open_runtime(art)
    chosen = spy(runtime)
    expected, ref_logits = greedy_reference(hf_model, PROMPT, steps=STEPS)
    slot = 1
    token = int(runtime.prefill(torch.tensor(PROMPT), slot=slot).argmax())
    assert token == expected[0]
    for step in range(STEPS):
        pos = len(PROMPT) + step
        if rows is None:  # the other slot sits at position 0: the largest live position picks the bucket
            logits = runtime.decode(torch.tensor([0, token]), torch.tensor([0, pos]))[slot]
        else:
            logits = runtime.decode_slots([slot], torch.tensor([token]), torch.tensor([pos]))[0]
        assert_logits_close(logits, ref_logits[step + 1], f"decode step {step} (position {pos})")
        token = int(logits.argmax())
        assert token == expected[step + 1]
    suffix = "" if rows is None else "_rows1"
    want = [f"token_generation_kv{16 if p < 16 else 32}{suffix}" if p < 32 else f"token_generation{suffix}"
            for p in range(len(PROMPT), len(PROMPT) + STEPS)]
    assert chosen == want


def test_sliding_window_in_a_kv_bucket_matches_transformers(tmp_path):
    """Mistral with a window shorter than the bucket: the bucket's mask must keep the window."""
    config = transformers.MistralConfig(**{**COMMON_CONFIG, **CONFIG, "sliding_window": 6})
    hf_model = save_tiny_checkpoint(config, tmp_path / "ckpt")
    art = export_tiny(tmp_path / "ckpt", tmp_path / "art", kv_buckets=[24], decode_batches=[])
    runtime = open_runtime(art)
    expected, ref_logits = greedy_reference(hf_model, PROMPT, steps=14)
    token = int(runtime.prefill(torch.tensor(PROMPT), slot=0).argmax())
    for step in range(14):
        logits = runtime.decode(torch.tensor([token, 0]), torch.tensor([len(PROMPT) + step, 0]))[0]
        assert_logits_close(logits, ref_logits[step + 1], f"decode step {step}")
        token = int(logits.argmax())
    assert token == expected[-1]


def test_kv_bucket_defaults_and_errors(tmp_path):
    assert default_kv_buckets(512) == [] and default_kv_buckets(4096) == [512, 1024, 2048]
    assert default_kv_buckets(1000) == [512]
    hf_dir = tmp_path / "ckpt"
    save_tiny_checkpoint(transformers.LlamaConfig(**{**COMMON_CONFIG, **CONFIG}), hf_dir)
    for bad in ([0], [32, 16], [SEQUENCE_LENGTH + 1]):
        with pytest.raises(ShapeError, match=r"--kv_buckets .* between 1 and sequence_length"):
            export_tiny(hf_dir, tmp_path / "bad", kv_buckets=bad)
    # Naming sequence_length itself is the whole-cache graph, which always exists.
    config = NeuronConfig.load(export_tiny(hf_dir, tmp_path / "same", kv_buckets=[SEQUENCE_LENGTH], batch_size=1,
                                           context_buckets=[32]))
    assert config.kv_buckets == []
