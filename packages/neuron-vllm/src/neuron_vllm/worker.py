"""NeuronWorker: the vLLM worker that loads an artifact and runs it through NeuronModelRunner.

The artifact owns its KV cache; the worker describes it to vLLM as what it is (kv_layout.py): as
many blocks as the slots hold, so vLLM's scheduler admits, chunks and preempts within it, while the
tensors stay the artifact's. Only what vLLM 0.32 calls is implemented; LoRA and the rest are
refused in checks.py before a worker exists.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.worker.worker_base import CompilationTimes, WorkerBase

from neuron_cache import Artifact
from neuron_infer import load_runtime
from neuron_infer.engine import BatchExecutor
from neuron_vllm import kv_layout
from neuron_vllm.encoder_runner import EncoderModelRunner
from neuron_vllm.runner import NeuronModelRunner
from neuron_vllm.sampling import HostSampling

logger = logging.getLogger("vllm.neuron_vllm.worker")

THREADS_ENV = "NEURON_VLLM_NUM_THREADS"


def compute_threads() -> int:
    """Threads for the graphs: $NEURON_VLLM_NUM_THREADS, else every core this process may use.

    Measured on an idle 2-core machine (bench/serve_bench.py, SmolLM2 batch 8): 2 threads gave 89 tok/s
    at concurrency 8 and 17.9 at concurrency 1, against 54 and 11.8 with 1 thread; a batch-8 decode step
    takes 53 ms on 2 threads, 96 ms on 1. (An earlier default of cores - 1 was chosen on a host loaded by
    other jobs, where a full-width OpenMP team stalls on descheduled members: set the variable there.)
    """
    if os.environ.get(THREADS_ENV):
        return max(1, int(os.environ[THREADS_ENV]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class NeuronWorker(WorkerBase):
    runner: NeuronModelRunner | None = None

    def init_device(self) -> None:
        self.device = torch.device("cpu")
        torch.set_num_threads(compute_threads())
        logger.info("neuron-vllm: running the graphs on %d threads (set %s to change)", torch.get_num_threads(),
                    THREADS_ENV)

    def load_model(self, *, load_dummy_weights: bool = False) -> None:
        if load_dummy_weights:
            raise ValueError("neuron-vllm loads the artifact's exported weights; load_format='dummy' is not supported")
        t = time.perf_counter()
        # vLLM's own --trust-remote-code is the consent to run an artifact's graphs that this machine did not
        # compile (neuron_cache.trust); without it such an artifact is refused before any of it is opened.
        runtime = load_runtime(Artifact.open(self.model_config.model),
                                 trust_remote_code=bool(self.model_config.trust_remote_code))
        executor = BatchExecutor(runtime)
        # An artifact that returns logits is sampled by vLLM's own Sampler; one that samples on device is not.
        sampling = None if executor.on_device_sampling else HostSampling.from_config(self.vllm_config)
        graph_vocab = runtime.vocab_size
        if sampling is not None and graph_vocab is not None and graph_vocab != sampling.vocab_size:
            raise ValueError(f"neuron-vllm: the artifact's graphs return {graph_vocab} logits per token but its "
                             f"config.json says vocab_size={sampling.vocab_size}: vLLM's sampler and tokenizer need "
                             "them equal. Fix: re-export the model instead of editing config.json")
        self.runner = NeuronModelRunner(executor, sampling,
                                        prefix_caching=bool(self.cache_config.enable_prefix_caching))
        logger.info("neuron-vllm: loaded %s in %.1f s", self.model_config.model, time.perf_counter() - t)

    def compile_or_warm_up_model(self) -> CompilationTimes:
        # Graphs are compiled at export; loading every bucket now keeps the first requests fast.
        t = time.perf_counter()
        self.runner.executor.runtime.warmup()
        return CompilationTimes(language_model=time.perf_counter() - t, encoder=0.0)

    # ---- the KV cache belongs to the artifact; vLLM gets its size and shape -------------------
    def get_kv_cache_spec(self) -> dict[str, Any]:
        return kv_layout.kv_cache_spec(self.runner.config, self.cache_config.block_size)

    def get_supported_kv_cache_layouts(self) -> list[str]:
        return ["LBHNC"]  # each layer's rows: [slot, kv head, position, head_dim]; vLLM allocates none of it

    def determine_available_memory(self) -> int:
        return kv_layout.kv_cache_bytes(self.runner.config, self.cache_config.block_size)

    def initialize_from_config(self, kv_cache_config: Any) -> None:
        # vLLM plans blocks; the artifact's runtime already holds the cache they stand for.
        want = kv_layout.num_blocks(self.runner.config, self.cache_config.block_size)
        if kv_cache_config.num_blocks != want:
            raise RuntimeError(f"vLLM planned {kv_cache_config.num_blocks} KV blocks, but the artifact's cache holds "
                               f"{want} (batch_size x ceil(sequence_length / block_size) + 1); do not pass "
                               "--num-gpu-blocks-override for a neuron artifact")

    def get_supported_tasks(self) -> tuple[str, ...]:
        return ("generate",)

    # ---- stepping ------------------------------------------------------------------------------
    def execute_model(self, scheduler_output: Any) -> ModelRunnerOutput | None:
        return self.runner.execute_model(scheduler_output)  # None: vLLM calls sample_tokens next

    def sample_tokens(self, grammar_output: Any) -> ModelRunnerOutput:
        return self.runner.sample_tokens(grammar_output)

    def take_draft_token_ids(self) -> None:
        return None

    def get_model(self) -> Any:
        raise NotImplementedError("neuron-vllm runs compiled graphs; there is no torch.nn.Module to hand out")

    def add_lora(self, lora_request: Any) -> bool:
        raise ValueError("neuron-vllm does not support LoRA: merge the adapter and re-export")

    def remove_lora(self, lora_id: int) -> bool:
        return False

    def pin_lora(self, lora_id: int) -> bool:
        return False

    def list_loras(self) -> set[int]:
        return set()

    def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        self.runner = None


class NeuronEncoderWorker(NeuronWorker):
    """The worker for an embedding artifact (vLLM's pooling runner): no KV cache, one encoder pass per step."""

    runner: EncoderModelRunner | None = None

    def load_model(self, *, load_dummy_weights: bool = False) -> None:
        if load_dummy_weights:
            raise ValueError("neuron-vllm loads the artifact's exported weights; load_format='dummy' is not supported")
        from neuron_infer import EncoderRuntime

        t = time.perf_counter()
        artifact = Artifact.open(self.model_config.model)
        runtime = EncoderRuntime(artifact, trust_remote_code=bool(self.model_config.trust_remote_code))
        pooling = artifact.config.pooling
        self.runner = EncoderModelRunner(runtime, normalize=bool(pooling and pooling.normalize))
        logger.info("neuron-vllm: loaded embedding artifact %s in %.1f s (up to %d inputs of %d tokens per step)",
                    self.model_config.model, time.perf_counter() - t, runtime.max_rows, runtime.max_length)

    def compile_or_warm_up_model(self) -> CompilationTimes:
        t = time.perf_counter()
        self.runner.runtime.warmup()  # loads every (rows, bucket) graph now rather than on the first requests
        return CompilationTimes(language_model=time.perf_counter() - t, encoder=0.0)

    # An encoder keeps no cache: an empty spec makes vLLM allocate none, schedule prompts whole and never preempt.
    def get_kv_cache_spec(self) -> dict[str, Any]:
        return {}

    def determine_available_memory(self) -> int:
        return 0

    def initialize_from_config(self, kv_cache_config: Any) -> None:
        return None

    def get_supported_tasks(self) -> tuple[str, ...]:
        return ("embed",)

    def execute_model(self, scheduler_output: Any) -> ModelRunnerOutput:
        return self.runner.execute_model(scheduler_output)

    def sample_tokens(self, grammar_output: Any) -> ModelRunnerOutput:
        from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT

        return EMPTY_MODEL_RUNNER_OUTPUT  # never called: execute_model always answers
