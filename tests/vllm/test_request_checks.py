"""neuron_vllm.checks.check_request: what the front end refuses with a 400 before the engine sees a request, on the
tiny artifact's real config (which has chunked-prefill graphs) and on that config without them or with on-device
sampling. Through the server: test_server.py, test_sampling_parity.py, test_tools_and_device_sampling.py."""

from __future__ import annotations

import dataclasses

import pytest
from vllm.sampling_params import SamplingParams

from neuron_cache import NeuronConfig
from neuron_vllm.checks import UnsupportedSettingError, check_request


@pytest.fixture(scope="module")
def config(tiny_artifact) -> NeuronConfig:
    config = NeuronConfig.load(tiny_artifact / "neuron_config.json")
    assert config.chunk_buckets and config.sequence_length == 64 and config.max_context_length == 32
    return config


def refused(params: SamplingParams, prompt_len: int, config: NeuronConfig) -> UnsupportedSettingError:
    with pytest.raises(UnsupportedSettingError) as err:
        check_request(params, prompt_len, config)
    return err.value


def test_chunked_prefill_graphs_take_prompts_up_to_sequence_length_minus_one(config):
    check_request(SamplingParams(), 63, config)
    err = refused(SamplingParams(), 64, config)
    assert err.setting == "prompt length" and "sequence_length - 1 = 63" in str(err)


def test_without_chunked_prefill_graphs_the_largest_bucket_is_the_limit(config):
    plain = dataclasses.replace(config, chunk_buckets=[])
    check_request(SamplingParams(), 32, plain)
    assert "max_context_length=32" in str(refused(SamplingParams(), 33, plain))
    assert refused(SamplingParams(prompt_logprobs=1), 10, plain).setting == "prompt_logprobs"


def test_prompt_logprobs_need_logits(config):
    check_request(SamplingParams(prompt_logprobs=2, presence_penalty=1.0, min_p=0.1, logprobs=3), 40, config)
    on_device = dataclasses.replace(config, on_device_sampling=True)
    assert refused(SamplingParams(prompt_logprobs=2), 10, on_device).setting == "prompt_logprobs"
    for params, name in [(SamplingParams(presence_penalty=1.0), "presence_penalty"),
                         (SamplingParams(min_p=0.1), "min_p"), (SamplingParams(logprobs=1), "logprobs")]:
        err = refused(params, 10, on_device)
        assert err.setting == name and "on_device_sampling" in str(err)
    check_request(SamplingParams(temperature=0.7, top_k=5, top_p=0.9, seed=3, n=2), 10, on_device)


def test_prompt_logprob_token_ids_are_refused(config):
    assert refused(SamplingParams(prompt_logprobs=1, prompt_logprob_token_ids=[5]), 10,
                   config).setting == "prompt_logprob_token_ids"
