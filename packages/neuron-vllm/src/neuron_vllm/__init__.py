"""neuron-vllm: a vLLM platform plugin that serves neuron artifacts through neuron-infer.

vLLM calls `register()` (entry point group `vllm.platform_plugins`) before it knows the model, so
the decision per model is made later, in `NeuronPlatform.check_and_update_config`: a directory
holding `neuron_config.json` is served by the neuron worker; any other model runs exactly as on
vLLM's own CPU platform. This module stays tiny: no torch, no vllm import at module level.
"""

from __future__ import annotations

import os

from neuron_vllm.__about__ import __version__

PLUGIN_NAME = "neuron"
PLATFORM = "neuron_vllm.platform.NeuronPlatform"


def register() -> str | None:
    """The platform's qualified name, or None to stay out of the way.

    Active when VLLM_PLUGINS names us, or when it is unset and this vLLM is a CPU build (the
    platform extends vLLM's CPU platform, so it must never displace CUDA, ROCm, TPU or XPU).
    """
    allowed = os.environ.get("VLLM_PLUGINS")
    if allowed is not None:
        # vLLM filters plugins by this list before calling us; checked again so a direct call agrees.
        return PLATFORM if PLUGIN_NAME in [p.strip() for p in allowed.split(",")] else None
    from vllm.platforms import cpu_platform_plugin

    return PLATFORM if cpu_platform_plugin() is not None else None


__all__ = ["PLATFORM", "PLUGIN_NAME", "__version__", "register"]
