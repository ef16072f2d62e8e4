"""Tensor-parallel artifacts: the process group of their ranks and a runtime that starts and owns them."""

from neuron_infer.parallel.ranks import MultiRankRuntime, RankFailedError
from neuron_infer.parallel.world import joined_world

__all__ = ["MultiRankRuntime", "RankFailedError", "joined_world"]
