"""NeuronPlatform: vLLM's CPU platform, plus the neuron worker for models that are neuron artifacts.

vLLM resolves the platform once per process, before any model is known (register() takes no
arguments), so this class must serve every model: for a directory holding neuron_config.json it
installs the neuron worker (the encoder worker for an embedding artifact, which vLLM runs
with its pooling runner) and checks vLLM's settings against the compiled shapes; for anything
else it defers entirely to CpuPlatform, so installing neuron-vllm changes nothing for other models.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from vllm.platforms.cpu import CpuPlatform

from neuron_cache import NeuronConfig
from neuron_vllm import kv_layout
from neuron_vllm.checks import UnsupportedSettingError, check_engine_config, check_request, is_artifact

logger = logging.getLogger("vllm.neuron_vllm")  # vLLM shows only loggers under `vllm.`

WORKER = "neuron_vllm.worker.NeuronWorker"
ENCODER_WORKER = "neuron_vllm.worker.NeuronEncoderWorker"


class NeuronPlatform(CpuPlatform):
    # The CPU enum is deliberate: for non-artifacts this platform *is* vLLM's CPU platform, and
    # the neuron worker runs host-side graphs, so every `is_cpu()` branch in vLLM applies to both.
    device_name = "cpu"

    # The artifact served by this process, set when its VllmConfig is checked (front end and
    # engine core each check theirs). validate_request reads it: the hook gets no config.
    artifact: ClassVar[NeuronConfig | None] = None

    @classmethod
    def check_and_update_config(cls, vllm_config: Any) -> None:
        model_config = vllm_config.model_config
        if model_config is None or not is_artifact(model_config.model):
            super().check_and_update_config(vllm_config)
            return
        neuron = NeuronConfig.load(f"{model_config.model}/neuron_config.json")
        check_engine_config(vllm_config, neuron, model_config.model)
        cls.artifact = neuron
        if neuron.is_encoder:
            cls._configure_encoder(vllm_config, neuron)
        else:
            cls._configure_decoder(vllm_config, neuron)
        vllm_config.scheduler_config.async_scheduling = False
        parallel = vllm_config.parallel_config
        if parallel.worker_cls == "auto":
            parallel.worker_cls = ENCODER_WORKER if neuron.is_encoder else WORKER
        # One worker in the engine-core process: the graphs are host code, there is no device to
        # isolate and no rank to coordinate.
        parallel.distributed_executor_backend = "uni"
        # A tensor-parallel artifact still has one vLLM worker: its ranks belong to neuron-infer's runtime.
        parallel.tensor_parallel_size = 1
        parallel.world_size = parallel.pipeline_parallel_size
        from vllm.config import CompilationMode

        vllm_config.compilation_config.mode = CompilationMode.NONE  # graphs are compiled already
        vllm_config.compilation_config.cudagraph_capture_sizes = []
        logger.info("neuron-vllm: serving %s artifact %s (batch %d, sequence %d, context buckets %s, %s)",
                    neuron.task, model_config.model, neuron.batch_size, neuron.sequence_length, neuron.context_buckets,
                    neuron.torch_dtype)

    @staticmethod
    def _configure_decoder(vllm_config: Any, neuron: NeuronConfig) -> None:
        # vLLM plans blocks over exactly the cache the artifact holds (kv_layout.py), so its scheduler
        # admits, chunks and preempts within it. Prefix reuse and prompts longer than the largest
        # bucket need the chunked-prefill graphs; without them the runner encodes each prompt whole.
        cache = vllm_config.cache_config
        if cache.block_size is None:
            cache.block_size = kv_layout.DEFAULT_BLOCK_SIZE
        cache.num_gpu_blocks_override = kv_layout.num_blocks(neuron, cache.block_size)
        if not neuron.chunk_buckets:
            cache.enable_prefix_caching = False

    @staticmethod
    def _configure_encoder(vllm_config: Any, neuron: NeuronConfig) -> None:
        # No KV cache (the worker reports an empty spec): nothing to reuse, and every input runs whole.
        cache = vllm_config.cache_config
        if cache.block_size is None:
            cache.block_size = kv_layout.DEFAULT_BLOCK_SIZE  # read by vLLM's scheduler; no block is ever allocated
        cache.enable_prefix_caching = False
        vllm_config.scheduler_config.enable_chunked_prefill = False
        # Whether an embedding is L2-normalized unless a request says (use_activation) is the artifact's
        # (sentence-transformers' Normalize module), not vLLM's default for its own poolers.
        pooler = vllm_config.model_config.pooler_config
        if pooler is not None and neuron.pooling is not None:
            pooler.use_activation = neuron.pooling.normalize

    @classmethod
    def validate_request(cls, processed_inputs: Any, params: Any) -> None:
        if cls.artifact is None:
            super().validate_request(processed_inputs, params)
            return
        from vllm.exceptions import VLLMValidationError

        prompt = processed_inputs.get("prompt_token_ids") if isinstance(processed_inputs, dict) else None
        try:
            check_request(params, len(prompt) if prompt is not None else None, cls.artifact)
        except UnsupportedSettingError as err:  # vLLM answers this one with HTTP 400, naming the parameter
            raise VLLMValidationError(str(err), parameter=err.setting, value=err.value) from None
