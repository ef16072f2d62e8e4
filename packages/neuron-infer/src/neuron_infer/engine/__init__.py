"""Continuous batching over an artifact's compiled graphs, usable without vLLM.

    engine = Engine.from_artifact("artifacts/smollm2").start()
    handle = engine.add_request("Hello", RequestParams(max_tokens=32, temperature=0.7, seed=1))
    for out in handle:        # streamed RequestOutputs
        print(out.text, end="")
    engine.shutdown()

See engine.py for the step order and the threading model.
"""

from neuron_infer.engine.engine import Engine, EngineConfig, EngineStats
from neuron_infer.engine.errors import EngineClosedError, QueueFullError, RequestError
from neuron_infer.engine.executor import BatchExecutor, DecodeEntry, SlotPool, StepResult
from neuron_infer.engine.params import RequestParams
from neuron_infer.engine.request import Completion, FinishReason, RequestHandle, RequestOutput
from neuron_infer.engine.sampler import TokenSampler
from neuron_infer.engine.stopping import TextState

__all__ = [
    "BatchExecutor",
    "Completion",
    "DecodeEntry",
    "Engine",
    "EngineClosedError",
    "EngineConfig",
    "EngineStats",
    "FinishReason",
    "QueueFullError",
    "RequestError",
    "RequestHandle",
    "RequestOutput",
    "RequestParams",
    "SlotPool",
    "StepResult",
    "TextState",
    "TokenSampler",
]
