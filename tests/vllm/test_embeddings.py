"""Embedding artifacts served by `neuron-vllm serve` through vLLM's pooling runner.

The runner's pooling step is checked with a fake runtime (one encoder pass per step, PoolingParams
applied as vLLM's embed head does); the server, on all-MiniLM-L6-v2 exported with torch-aot, is
driven with the `openai` client and compared with sentence-transformers' own encode()."""

from __future__ import annotations

import base64
import json
import re
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import openai
import pytest
import torch
from vllm.pooling_params import PoolingParams
from vllm_testlib import run_worker

from neuron_cache import NeuronConfig
from neuron_vllm.checks import UnsupportedSettingError, check_pooling_request, served_runner
from neuron_vllm.encoder_runner import EncoderModelRunner

NAME = "minilm"
TEXTS = ["A man is eating food.", "A man is riding a horse.", "The new movie is awesome.",
         "The cat sits outside.", "Two men pushed carts through the woods.", "A woman is playing violin.",
         "Is it going to rain tomorrow? The forecast says there is a chance of thunderstorms in the evening.",
         "Python is a programming language.", "A monkey is playing drums.", "Der Hund schläft.", "ok",
         "Sentence embeddings map text to vectors whose cosine similarity reflects meaning, which makes them useful "
         "for search, clustering and deduplication of large document collections."]


# ---- the runner's pooling step, with a fake runtime ----------------------------------------------
class FakeRuntime:
    """EncoderRuntime's embed(): a vector computed from the token ids, so every row is recognizable."""

    def __init__(self, max_rows: int = 8, max_length: int = 32):
        self.max_rows, self.max_length = max_rows, max_length
        self.calls: list[tuple[list[list[int]], bool | None]] = []

    @staticmethod
    def vector(ids: list[int]) -> torch.Tensor:
        return torch.tensor([float(len(ids)), float(sum(ids)), float(ids[0]), 1.0])

    def embed(self, token_ids: list[list[int]], normalize: bool | None = None) -> torch.Tensor:
        assert len(token_ids) <= self.max_rows
        self.calls.append((token_ids, normalize))
        return torch.stack([self.vector(ids) for ids in token_ids])


def new(rid: str, prompt: list[int], **params) -> SimpleNamespace:
    return SimpleNamespace(req_id=rid, prompt_token_ids=prompt, pooling_params=PoolingParams(task="embed", **params),
                           num_computed_tokens=0)


def step(news=(), scheduled=None, cached=(), finished=()) -> SimpleNamespace:
    """A SchedulerOutput with the fields the runner reads; by default every new request is scheduled whole."""
    scheduled = scheduled if scheduled is not None else {n.req_id: len(n.prompt_token_ids) for n in news}
    return SimpleNamespace(scheduled_new_reqs=list(news), num_scheduled_tokens=scheduled, finished_req_ids=set(finished),
                           scheduled_cached_reqs=SimpleNamespace(req_ids=[r for r, _ in cached],
                                                                 num_computed_tokens=[c for _, c in cached]))


def test_one_step_embeds_every_scheduled_prompt_in_one_pass_with_each_requests_params():
    runtime = FakeRuntime()
    runner = EncoderModelRunner(runtime, normalize=True)
    prompts = {"a": [101, 7, 102], "b": [101, 9, 9, 9, 102], "c": [101, 5, 102], "d": [101, 3, 4, 102]}
    out = runner.execute_model(step([new("a", prompts["a"]),  # use_activation unset: the artifact's default
                                     new("b", prompts["b"], use_activation=False),
                                     new("c", prompts["c"], use_activation=True, dimensions=2),
                                     new("d", prompts["d"], use_activation=False, dimensions=3)]))
    assert runtime.calls == [([prompts[r] for r in "abcd"], False)]  # one pass; normalization is the runner's
    assert out.req_ids == list("abcd") and out.req_id_to_index == {r: i for i, r in enumerate("abcd")}
    v = {r: FakeRuntime.vector(p) for r, p in prompts.items()}
    expected = [v["a"] / v["a"].norm(), v["b"], v["c"][:2] / v["c"][:2].norm(), v["d"][:3]]  # truncate, then normalize
    for got, want in zip(out.pooler_output, expected):
        assert got.dtype == torch.float32 and got.shape == want.shape
        torch.testing.assert_close(got, want)
    assert runner.stats.max_batch == 4 and runner.stats.steps == 1


def test_the_artifacts_default_applies_when_a_request_leaves_use_activation_unset():
    runner = EncoderModelRunner(FakeRuntime(), normalize=False)
    (got,) = runner.execute_model(step([new("a", [101, 7, 102])])).pooler_output
    torch.testing.assert_close(got, FakeRuntime.vector([101, 7, 102]))


def test_a_prompt_not_scheduled_whole_is_answered_when_its_last_tokens_are():
    runtime = FakeRuntime()
    runner = EncoderModelRunner(runtime, normalize=False)
    out = runner.execute_model(step([new("a", [1, 2, 3, 4]), new("b", [5, 6])], scheduled={"a": 2, "b": 2}))
    assert out.pooler_output[0] is None and out.pooler_output[1] is not None
    assert runtime.calls == [([[5, 6]], False)]
    out = runner.execute_model(step(scheduled={"a": 2}, cached=[("a", 2)], finished=["b"]))
    assert out.req_ids == ["a"] and runtime.calls[-1] == ([[1, 2, 3, 4]], False)
    assert "b" not in runner.requests
    runner.execute_model(step(finished=["a"]))
    assert not runner.requests


def test_more_requests_than_graph_rows_run_in_several_passes():
    runtime = FakeRuntime(max_rows=2)
    runner = EncoderModelRunner(runtime, normalize=False)
    out = runner.execute_model(step([new(str(i), [i + 1] * (i + 1)) for i in range(5)]))
    assert [len(ids) for ids, _ in runtime.calls] == [2, 2, 1]
    for i, got in enumerate(out.pooler_output):
        torch.testing.assert_close(got, FakeRuntime.vector([i + 1] * (i + 1)))


def _encoder(task: str, pooling: object = None, max_context_length: int = 128) -> SimpleNamespace:
    return SimpleNamespace(is_encoder=True, task=task, pooling=pooling, max_context_length=max_context_length)


def test_only_embedding_encoders_are_served_and_the_refusal_names_what_is():
    assert served_runner(_encoder("feature-extraction", pooling=SimpleNamespace(mode="mean"))) == "pooling"
    assert served_runner(SimpleNamespace(is_encoder=False, task="text-generation")) == "generate"
    for config in (_encoder("fill-mask"), _encoder("text-classification"), _encoder("feature-extraction")):
        with pytest.raises(UnsupportedSettingError, match="serves text-generation artifacts and embedding") as err:
            served_runner(config)
        assert err.value.setting == "task"


def test_pooling_requests_other_than_embed_and_over_long_inputs_are_refused():
    config = _encoder("feature-extraction", pooling=SimpleNamespace(mode="mean"))
    check_pooling_request(PoolingParams(task="embed"), 128, config)
    with pytest.raises(UnsupportedSettingError, match="max_context_length=128"):
        check_pooling_request(PoolingParams(task="embed"), 129, config)
    with pytest.raises(UnsupportedSettingError, match="serves embeddings"):
        check_pooling_request(PoolingParams(task="classify"), 4, config)


# ---- the server, against sentence-transformers ---------------------------------------------------
@pytest.fixture(scope="module")
def sentence_transformer():
    from sentence_transformers import SentenceTransformer
    from support.encoders import minilm_dir

    return SentenceTransformer(str(minilm_dir()), device="cpu")


@pytest.fixture(scope="module")
def client(minilm_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{minilm_server.url}/v1", api_key="unused", timeout=180, max_retries=0)


def embeddings(client: openai.OpenAI, texts: list[str] | str, **kwargs) -> torch.Tensor:
    data = client.embeddings.create(model=NAME, input=texts, **kwargs).data
    return torch.tensor([d.embedding for d in sorted(data, key=lambda d: d.index)])


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    want = torch.as_tensor(want).float()
    assert got.shape == want.shape
    cos = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert cos.min() >= 0.9999, cos
    torch.testing.assert_close(got.norm(dim=-1), want.norm(dim=-1), rtol=1e-3, atol=1e-4)


@pytest.mark.vllm
@pytest.mark.slow
def test_embeddings_equal_sentence_transformers(client, sentence_transformer):
    got = embeddings(client, TEXTS)
    assert_same(got, sentence_transformer.encode(TEXTS, convert_to_tensor=True))
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(TEXTS)))  # the model's Normalize module


@pytest.mark.vllm
@pytest.mark.slow
def test_use_activation_false_returns_the_pooled_vectors_unnormalized(client, sentence_transformer):
    from sentence_transformers import SentenceTransformer

    without_normalize = SentenceTransformer(modules=[sentence_transformer[0], sentence_transformer[1]], device="cpu")
    got = embeddings(client, TEXTS[:4], extra_body={"use_activation": False})
    assert_same(got, without_normalize.encode(TEXTS[:4], convert_to_tensor=True))


@pytest.mark.vllm
@pytest.mark.slow
def test_concurrent_requests_are_answered_correctly_and_batched(client, sentence_transformer, minilm_server):
    before = minilm_server.status()["batches"]
    texts = [f"{t} ({i})" for i, t in enumerate(TEXTS + TEXTS[:4])]  # 16 distinct inputs
    with ThreadPoolExecutor(len(texts)) as pool:
        got = list(pool.map(lambda t: embeddings(client, t)[0], texts))
    assert_same(torch.stack(got), sentence_transformer.encode(texts, convert_to_tensor=True))
    after = minilm_server.status()["batches"]
    grew = {int(k): n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0)}
    assert sum(k * n for k, n in grew.items()) == len(texts), (before, after)  # every request embedded once
    assert max(grew) > 1, f"no step embedded more than one request: {grew}"


@pytest.mark.vllm
@pytest.mark.slow
def test_base64_encoding_decodes_to_the_same_vectors(client, sentence_transformer):
    data = client.embeddings.create(model=NAME, input=TEXTS[:3], encoding_format="base64").data
    got = torch.tensor(np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in data]))
    assert_same(got, sentence_transformer.encode(TEXTS[:3], convert_to_tensor=True))


@pytest.mark.vllm
@pytest.mark.slow
def test_score_is_the_cosine_of_the_embeddings(minilm_server, sentence_transformer):
    """vLLM's /score on an embedding model: cosine similarity of its embeddings, here our runner's."""
    import httpx

    reply = httpx.post(f"{minilm_server.url}/score", timeout=120,
                       json={"model": NAME, "text_1": TEXTS[0], "text_2": TEXTS[1:4]}).json()
    got = torch.tensor([d["score"] for d in sorted(reply["data"], key=lambda d: d["index"])])
    ref = sentence_transformer.encode(TEXTS[:4], convert_to_tensor=True)
    want = torch.nn.functional.cosine_similarity(ref[:1], ref[1:])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.vllm
@pytest.mark.slow
def test_inputs_over_the_compiled_length_are_refused_with_400(client):
    with pytest.raises(openai.BadRequestError, match="maximum context length is 128"):
        client.embeddings.create(model=NAME, input="word " * 200)
    with pytest.raises(openai.BadRequestError, match="Matryoshka"):  # vLLM's own check: MiniLM is not matryoshka
        client.embeddings.create(model=NAME, input="hi", dimensions=8)
    assert len(embeddings(client, "still serving")[0]) == 384


@pytest.mark.vllm
@pytest.mark.slow
def test_serve_refuses_an_encoder_artifact_that_is_not_an_embedder(minilm_artifact, tmp_path):
    from neuron_vllm.launch import ServeError, ServeOptions, server_command

    data = json.loads((minilm_artifact / "neuron_config.json").read_text())
    data.update(task="fill-mask")
    data.pop("pooling", None)
    (tmp_path / "neuron_config.json").write_text(json.dumps(data))
    with pytest.raises(ServeError, match="not task 'fill-mask'"):
        server_command(tmp_path, ServeOptions(model=str(tmp_path)))
    config = NeuronConfig.load(minilm_artifact / "neuron_config.json")
    command = server_command(minilm_artifact, ServeOptions(model=str(minilm_artifact)))
    assert " ".join(command).endswith(f"--max-num-seqs {config.batch_size} --dtype float32 --runner pooling --convert "
                                      f"embed --max-model-len 128 --max-num-batched-tokens {config.batch_size * 128}")


@pytest.mark.vllm
@pytest.mark.slow
def test_engine_config_of_an_embedding_artifact(minilm_artifact, tmp_path):
    """What the platform decides for vLLM's own engine arguments (no engine started)."""
    ok = {"runner": "pooling", "max_model_len": 128, "max_num_seqs": 8, "dtype": "float32"}
    auto = {k: v for k, v in ok.items() if k != "runner"}  # vLLM's own choice for BertModel is pooling
    cases = [ok, auto, {**ok, "runner": "generate"}, {**ok, "enable_chunked_prefill": True, "max_num_batched_tokens": 64},
             {**ok, "max_model_len": 256}, {**ok, "enable_prompt_embeds": True}]
    (tmp_path / "cases.json").write_text(json.dumps([{"model": str(minilm_artifact), "args": a} for a in cases]))
    run_worker("engine_config.py", [str(tmp_path / "cases.json"), str(tmp_path / "out.json")], timeout=180)
    results = json.loads((tmp_path / "out.json").read_text())["results"]
    for result in results[:2]:
        assert result.get("worker_cls") == "neuron_vllm.worker.NeuronEncoderWorker" and not result["prefix_caching"]
    # (vLLM refuses --runner generate for BertModel itself; ours names the runner for a model vLLM would accept)
    for result, pattern in zip(results[2:], [r"runner='generate' .*pass --runner pooling|not support `--runner generate",
                                             r"max_num_batched_tokens=64 .*at least max_model_len=128",
                                             r"max_model_len=256 .*sequence_length=128",
                                             r"enable_prompt_embeds=True .*token ids"]):
        assert re.search(pattern, result.get("error", "")), result
