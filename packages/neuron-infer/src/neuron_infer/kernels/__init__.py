"""Kernels the runtime owns: C++ torch ops built from source at first use (build.py), loaded before any graph
that calls them."""

from neuron_infer.kernels.build import KernelUnavailable
from neuron_infer.kernels.gemv import OP as LINEAR_16BIT_OP
from neuron_infer.kernels.gemv import host_paths, kernel_record, linear, load, require, require_all

__all__ = ["LINEAR_16BIT_OP", "KernelUnavailable", "host_paths", "kernel_record", "linear", "load", "require", "require_all"]
