"""BatchExecutor over chunked prefill: prompts past max_context_length, prompts continuing a prefix copied from
another slot (`copy_kv`, then `prefill(start=...)`), `encode` for logits of every position, and the host-side
first token of an on-device-sampling artifact. The session's tiny artifact (prompt buckets 8, 16, 32 in a
64-position cache) has the default chunk graphs, 8 and 32. Tokens are compared with transformers' greedy ones."""

from __future__ import annotations

import pytest
import torch
from support.tiny import export_tiny, transformers_greedy

from neuron_cache import Artifact
from neuron_infer import DecoderRuntime
from neuron_infer.engine import BatchExecutor, DecodeEntry, TokenSampler

LONG = torch.randint(3, 150, (50,), generator=torch.Generator().manual_seed(5)).tolist()  # past max_context_length 32


@pytest.fixture(scope="module")
def executor(tiny_artifact) -> BatchExecutor:
    runtime = DecoderRuntime(Artifact.open(tiny_artifact))
    assert runtime.config.chunk_buckets == [8, 32] and runtime.max_prompt_length == 63
    return BatchExecutor(runtime)


def generate(executor: BatchExecutor, slot: int, prompt: list[int], steps: int, start: int = 0,
             sampler: TokenSampler | None = None) -> list[int]:
    sampler = sampler or TokenSampler.greedy()
    tokens = [executor.prefill(slot, prompt, sampler, start=start).token]
    for step in range(steps - 1):
        tokens.append(executor.decode({slot: DecodeEntry(tokens[-1], len(prompt) + step, sampler)})[slot].token)
    return tokens


def spy_chunks(executor: BatchExecutor, monkeypatch) -> list[tuple[int, int]]:
    calls, chunk = [], executor.runtime.prefill_chunk
    monkeypatch.setattr(executor.runtime, "prefill_chunk",
                        lambda tokens, slot, start: calls.append((len(tokens), start)) or chunk(tokens, slot, start))
    return calls


def test_a_prompt_past_max_context_length_goes_through_chunks(executor, reference_model, monkeypatch):
    calls = spy_chunks(executor, monkeypatch)
    assert generate(executor, 1, LONG, 6) == transformers_greedy(reference_model, LONG, 6)
    assert calls == [(50, 0)]
    assert generate(executor, 0, LONG[:20], 4) == transformers_greedy(reference_model, LONG[:20], 4)
    assert calls == [(50, 0)]  # a prompt that fits a bucket, from position 0: the context-encoding graph


def test_a_prefix_copied_from_another_slot(executor, reference_model, monkeypatch):
    shared, first, second = LONG[:24], LONG[24:30], LONG[30:41]
    assert generate(executor, 0, shared + first, 3) == transformers_greedy(reference_model, shared + first, 3)
    calls = spy_chunks(executor, monkeypatch)
    executor.copy_kv(0, 1, len(shared))
    assert generate(executor, 1, shared + second, 5, start=len(shared)) == transformers_greedy(
        reference_model, shared + second, 5)
    assert calls == [(len(second), len(shared))]


def test_encode_returns_every_position_and_prefill_continues(executor, reference_model):
    prompt = LONG[:45]
    with torch.no_grad():
        ref = reference_model(torch.tensor([prompt])).logits[0].float()
    head = executor.encode(0, prompt[:20], 0)  # a prompt scheduled over two steps
    result = executor.prefill(0, prompt, TokenSampler.greedy(), start=20)
    assert head.shape == (20, ref.shape[1]) and head.dtype == torch.float32
    assert (head - ref[:20]).abs().max() <= 1e-4 * ref.abs().max()
    assert (result.logits - ref[-1]).abs().max() <= 1e-4 * ref.abs().max()
    assert result.token == int(ref[-1].argmax())


def test_bad_start_is_refused(executor):
    with pytest.raises(ValueError, match=r"start=5: the prompt has 5 tokens"):
        executor.prefill(0, LONG[:5], TokenSampler.greedy(), start=5)
    with pytest.raises(ValueError, match=r"start=-1"):
        executor.prefill(0, LONG[:5], TokenSampler.greedy(), start=-1)
    with pytest.raises(ValueError, match=r"positions \[0, 70\) do not fit the KV cache"):
        executor.prefill(0, LONG + LONG[:20], TokenSampler.greedy())


def test_on_device_sampling_artifact_samples_a_chunked_prompt_on_the_host(tiny_checkpoint, tmp_path_factory,
                                                                         reference_model):
    art = export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("ods-chunks") / "tiny-ods", on_device_sampling=True,
                      decode_batches=[], context_buckets=[8, 32])
    executor = BatchExecutor(DecoderRuntime(Artifact.open(art)))
    assert executor.on_device_sampling and executor.config.chunk_buckets == [8, 32]
    first = executor.prefill(0, LONG, TokenSampler.greedy())
    assert first.logits is not None and first.logits.shape == (reference_model.config.vocab_size,)
    assert generate(executor, 1, LONG, 5) == transformers_greedy(reference_model, LONG, 5)
    assert executor.prefill(0, LONG[:10], TokenSampler.greedy()).logits is None  # sampled on device
