"""neuron-infer: run compiled artifacts (graphs plus weights) without model source code."""

from neuron_infer.__about__ import __version__
from neuron_infer.encoder_modeling import (
    NeuronModelForFeatureExtraction,
    NeuronModelForMaskedLM,
    NeuronModelForQuestionAnswering,
    NeuronModelForSequenceClassification,
    NeuronModelForTokenClassification,
    load_model,
)
from neuron_infer.encoder_runtime import EncoderRuntime
from neuron_infer.engine import Engine, EngineConfig, RequestParams
from neuron_infer.modeling import NeuronModelForCausalLM
from neuron_infer.runtime import DecoderRuntime, load_runtime
from neuron_infer.sampling import SamplingParams

__all__ = [
    "DecoderRuntime",
    "EncoderRuntime",
    "Engine",
    "EngineConfig",
    "NeuronModelForCausalLM",
    "NeuronModelForFeatureExtraction",
    "NeuronModelForMaskedLM",
    "NeuronModelForQuestionAnswering",
    "NeuronModelForSequenceClassification",
    "NeuronModelForTokenClassification",
    "RequestParams",
    "SamplingParams",
    "__version__",
    "load_model",
    "load_runtime",
]
