"""vLLM settings checked against the artifact's compiled shapes, and request features refused.

Each failure names the vLLM setting, its value, the artifact's value, and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neuron_cache import CONFIG_NAME, NeuronConfig


class UnsupportedSettingError(ValueError):
    def __init__(self, setting: str, value: Any, message: str):
        super().__init__(message)
        self.setting, self.value = setting, value


def is_artifact(model: str | None) -> bool:
    return model is not None and (Path(model) / CONFIG_NAME).is_file()


EMBEDDING_TASKS = ("feature-extraction", "sentence-similarity")  # served through vLLM's pooling runner (/v1/embeddings)


def served_runner(neuron: NeuronConfig) -> str:
    """vLLM's runner for the artifact: "generate" (text generation) or "pooling" (embeddings); other encoder
    tasks are refused, naming what is served."""
    if not neuron.is_encoder:
        return "generate"
    if neuron.task in EMBEDDING_TASKS and neuron.pooling is not None:
        return "pooling"
    what = f"task '{neuron.task}'" if neuron.task not in EMBEDDING_TASKS else f"task '{neuron.task}' without pooling"
    raise _fail("task", neuron.task,
                f"neuron-vllm serves text-generation artifacts and embedding artifacts (feature-extraction or "
                f"sentence-similarity with pooling), not {what}",
                "run this artifact with neuron-infer's EncoderRuntime, or export a sentence-transformers model "
                "(with its Pooling module) as feature-extraction to serve /v1/embeddings")


def _fail(setting: str, value: Any, allowed: str, fix: str) -> UnsupportedSettingError:
    return UnsupportedSettingError(setting, value,
                                   f"neuron-vllm: {setting}={value!r} is not supported: {allowed}. Fix: {fix}.")


def check_engine_config(vllm_config: Any, neuron: NeuronConfig, root: str) -> None:
    """Refuse vLLM settings the compiled graphs cannot honour (called once per VllmConfig)."""
    model, sched, par = vllm_config.model_config, vllm_config.scheduler_config, vllm_config.parallel_config
    if sched.max_num_seqs > neuron.batch_size:
        raise _fail("max_num_seqs", sched.max_num_seqs, f"at most the artifact's compiled batch_size={neuron.batch_size}",
                    f"pass max_num_seqs={neuron.batch_size} (--max-num-seqs), or re-export with a larger --batch_size")
    if model.max_model_len > neuron.sequence_length:
        raise _fail("max_model_len", model.max_model_len,
                    f"at most the artifact's compiled sequence_length={neuron.sequence_length}",
                    f"pass max_model_len={neuron.sequence_length} (--max-model-len), or re-export with a larger "
                    "--sequence_length")
    dtype = str(model.dtype).removeprefix("torch.")
    if dtype != neuron.torch_dtype:
        raise _fail("dtype", dtype, f"the artifact was compiled for torch_dtype={neuron.torch_dtype}",
                    f"pass dtype='{neuron.torch_dtype}' (--dtype {neuron.torch_dtype}), or re-export with that dtype")
    # A tensor-parallel artifact's ranks are processes neuron-infer starts and owns: vLLM runs one worker. Its
    # own --tensor-parallel-size may be left at 1 or say the artifact's value; anything else is a mistake.
    if par.tensor_parallel_size not in (1, neuron.tensor_parallel_size):
        raise _fail("tensor_parallel_size", par.tensor_parallel_size,
                    f"the artifact was compiled for tensor_parallel_size={neuron.tensor_parallel_size}",
                    f"omit --tensor-parallel-size (the artifact's {neuron.tensor_parallel_size} ranks are started by "
                    "neuron-infer), or re-export")
    if par.pipeline_parallel_size != 1 or par.data_parallel_size != 1:
        raise _fail("pipeline/data_parallel_size", (par.pipeline_parallel_size, par.data_parallel_size),
                    "1 each (an artifact is one compiled model instance)", "run one server per artifact copy")
    if vllm_config.lora_config is not None:
        raise _fail("enable_lora", True, "compiled graphs carry no LoRA adapters",
                    "merge the adapter into the checkpoint and re-export, or serve without --enable-lora")
    if vllm_config.speculative_config is not None:
        raise _fail("speculative_config", "set", "no speculation graph in neuron-vllm", "remove the speculative config")
    runner = served_runner(neuron)
    if model.runner_type != runner:
        raise _fail("runner", model.runner_type, f"the artifact (task '{neuron.task}') runs as '{runner}'",
                    f"pass --runner {runner}, or start it with `neuron-vllm serve`, which does")
    # vLLM checks this itself unless --enable-chunked-prefill is given; the platform turns that off (no KV cache to
    # chunk into), after which a longer input would never be scheduled.
    if runner == "pooling" and sched.max_num_batched_tokens < model.max_model_len:
        raise _fail("max_num_batched_tokens", sched.max_num_batched_tokens,
                    f"at least max_model_len={model.max_model_len}: an embedding input is never split",
                    f"pass --max-num-batched-tokens {neuron.batch_size * model.max_model_len} (batch_size x "
                    "max_model_len lets every step hold a full batch)")
    if runner == "pooling" and model.enable_prompt_embeds:
        raise _fail("enable_prompt_embeds", True, "the encoder graphs take token ids", "drop --enable-prompt-embeds")
    if model.quantization is not None:
        raise _fail("quantization", model.quantization, "weights are as exported", "drop --quantization")


# SamplingParams fields at their defaults (value as the check reads it, default, the fix).
_ON_DEVICE_FIX = "or re-export without --on_device_sampling (vLLM then samples the returned logits)"


def _sampling_features(sp: Any) -> dict[str, tuple[Any, Any, str]]:
    """What a graph compiled with on-device sampling (temperature, top-k, top-p and a uniform draw) cannot do."""
    return {
        "presence_penalty": (sp.presence_penalty, 0.0, "omit presence_penalty"),
        "frequency_penalty": (sp.frequency_penalty, 0.0, "omit frequency_penalty"),
        "repetition_penalty": (sp.repetition_penalty, 1.0, "omit repetition_penalty"),
        "min_p": (sp.min_p, 0.0, "omit min_p; use top_p or top_k"),
        "min_tokens": (sp.min_tokens, 0, "omit min_tokens"),
        "logit_bias": (sp.logit_bias or None, None, "omit logit_bias"),
        "allowed_token_ids": (sp.allowed_token_ids or None, None, "omit allowed_token_ids"),
        "bad_words": (sp.bad_words or None, None, "omit bad_words"),
        "structured_outputs": (sp.structured_outputs, None,
                               "omit response_format, structured_outputs and tool_choice='required' or named"),
        "logprobs": (sp.logprobs, None, "omit logprobs"),
        "logprob_token_ids": (sp.logprob_token_ids or None, None, "omit logprob_token_ids"),
        "thinking_token_budget": (sp.thinking_token_budget, None, "omit thinking_token_budget"),
    }


def _prompt_features(sp: Any, neuron: NeuronConfig) -> dict[str, tuple[Any, Any, str]]:
    """What needs logits at every prompt position: the chunked-prefill graphs return them (the context-encoding
    graphs only the last), and vLLM's Sampler scores them (not with on-device sampling)."""
    features = {
        "prompt_logprob_token_ids": (sp.prompt_logprob_token_ids or None, None, "omit prompt_logprob_token_ids"),
        "watermarking": (sp.watermarking or None, None, "omit watermarking"),
    }
    if not neuron.chunk_buckets or neuron.on_device_sampling:
        features["prompt_logprobs"] = (sp.prompt_logprobs, None, "omit prompt_logprobs (echo + logprobs), or "
                                       "re-export with --chunk-buckets and without --on_device_sampling")
    return features


def check_request(params: Any, prompt_len: int | None, neuron: NeuronConfig) -> None:
    """Refuse a request's features the artifact cannot serve. Runs in the front end, before the request
    reaches the engine, so the OpenAI server answers 400 instead of failing the step (500).

    An artifact that returns logits is sampled by vLLM's own Sampler: every sampling feature works, and
    prompt_logprobs when it has chunked-prefill graphs (they return every position's logits). One that
    samples on device keeps
    temperature, top_k, top_p, seed, n, stop and max_tokens."""
    if neuron.is_encoder:
        check_pooling_request(params, prompt_len, neuron)
        return
    sp = params
    if not hasattr(sp, "temperature"):
        raise _fail("task", getattr(sp, "task", type(sp).__name__), "this artifact serves text generation",
                    "send a completion or chat request")
    limit = neuron.max_prompt_length
    if prompt_len is not None and prompt_len > limit:
        if neuron.chunk_buckets:
            raise _fail("prompt length", prompt_len, f"at most sequence_length - 1 = {limit} tokens",
                        "shorten the prompt, or re-export with a larger --sequence_length")
        raise _fail("prompt length", prompt_len,
                    f"at most the artifact's max_context_length={limit} tokens (it has no chunked-prefill graphs)",
                    "shorten the prompt, or re-export with a larger --max_context_length, or with --chunk-buckets "
                    "for prompts up to sequence_length - 1")
    for name, (value, default, fix) in _prompt_features(sp, neuron).items():
        if value != default:
            raise _fail(name, value, f"neuron-vllm supports only the default ({default!r})", fix)
    if not neuron.on_device_sampling:
        return
    for name, (value, default, fix) in _sampling_features(sp).items():
        if value != default:
            raise _fail(name, value, "this artifact samples on device (temperature, top_k, top_p, seed only) and "
                        "returns no logits", f"{fix}, {_ON_DEVICE_FIX}")


def check_pooling_request(params: Any, prompt_len: int | None, neuron: NeuronConfig) -> None:
    """An embedding artifact answers the "embed" task (/v1/embeddings, and what vLLM builds on it) for prompts
    of at most max_context_length tokens."""
    task = getattr(params, "task", None)
    if not hasattr(params, "dimensions") or task != "embed":
        raise _fail("task", task or type(params).__name__, "this artifact serves embeddings ('embed': /v1/embeddings)",
                    "send an embeddings request")
    if prompt_len is not None and prompt_len > neuron.max_context_length:
        raise _fail("prompt length", prompt_len, f"at most the artifact's max_context_length={neuron.max_context_length} "
                    "tokens", "shorten the input, or re-export with a larger --sequence_length")
    if getattr(params, "late_interaction_params", None) is not None or getattr(params, "step_tag_id", None) is not None:
        raise _fail("pooling", "late interaction / step pooling", "sequence embeddings only", "send an embeddings request")
