"""Real weights: all-MiniLM-L6-v2 compiled with torch-aot must embed like sentence-transformers itself (cosine
>= 0.9999 per sentence, float32) for a few hundred varied sentences, at batch 1 and batch 32."""

from __future__ import annotations

import numpy as np
import pytest
from support.encoders import minilm_dir, varied_sentences

SENTENCES = varied_sentences(300)


@pytest.fixture(scope="module")
def sentence_transformer():
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    model.max_seq_length = 128  # the artifact's longest input: both sides truncate alike
    return model


@pytest.fixture(scope="module")
def neuron_model(minilm_artifact):
    from neuron_infer import NeuronModelForFeatureExtraction

    return NeuronModelForFeatureExtraction.from_pretrained(minilm_artifact)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("batch_size", [1, 32])
def test_minilm_embeddings_match_sentence_transformers(sentence_transformer, neuron_model, batch_size):
    sentences = SENTENCES if batch_size == 32 else SENTENCES[:120]
    want = sentence_transformer.encode(sentences, batch_size=batch_size, normalize_embeddings=True)
    got = neuron_model.encode(sentences, batch_size=batch_size)  # normalized by default: the folder's Normalize
    assert got.shape == want.shape == (len(sentences), 384) and got.dtype == np.float32
    cos = _cosines(got, want)
    assert cos.min() >= 0.9999, f"sentence {int(cos.argmin())}: cosine {cos.min():.6f}"
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_a_single_sentence_gives_one_vector(sentence_transformer, neuron_model):
    want = sentence_transformer.encode("A single sentence.")
    got = neuron_model.encode("A single sentence.")
    assert got.shape == want.shape == (384,)
    assert float(_cosines(got[None], want[None])[0]) >= 0.9999


def test_unnormalized_embeddings_are_the_mean_pooled_states(sentence_transformer, neuron_model):
    import torch

    features = sentence_transformer.preprocess(SENTENCES[:8])
    with torch.no_grad():  # sentence-transformers' Transformer and Pooling modules, without its Normalize
        want = sentence_transformer[1](sentence_transformer[0](features))["sentence_embedding"].numpy()
    got = neuron_model.encode(SENTENCES[:8], normalize_embeddings=False)
    np.testing.assert_allclose(got, want, atol=2e-5)
