"""neuron-cache: the artifact contract (`neuron_config.json`) and the compile cache. No torch here."""

from neuron_cache.__about__ import __version__
from neuron_cache.artifact import Artifact, sha256_file
from neuron_cache.config import (
    CONFIG_NAME,
    SCHEMA_VERSION,
    DerivedTensor,
    FileEntry,
    GraphEntry,
    NeuronConfig,
    Pooling,
    Producer,
    Quantization,
    ShardSpec,
    Target,
    TensorSpec,
    WeightsSpec,
)
from neuron_cache.errors import ArtifactError, NeuronConfigError, SchemaVersionError

__all__ = [
    "CONFIG_NAME",
    "SCHEMA_VERSION",
    "Artifact",
    "ArtifactError",
    "DerivedTensor",
    "FileEntry",
    "GraphEntry",
    "NeuronConfig",
    "NeuronConfigError",
    "Pooling",
    "Producer",
    "Quantization",
    "SchemaVersionError",
    "ShardSpec",
    "Target",
    "TensorSpec",
    "WeightsSpec",
    "__version__",
    "sha256_file",
]
