"""Build a kernel's C++ source into a torch op library at first use, cached by what the binary depends on.

The cache key is the source's hash, the torch version and the compiler flags: a library is rebuilt only when
one of them changes, and a built one loads without a compiler (`torch.ops.load_library`). Cache directory:
$NEURON_KERNEL_CACHE, else ~/.cache/neuron/kernels.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

import torch

# No -march: every vector path carries its own target attribute and is chosen at run time by cpuid, so a library
# built on one machine never executes an instruction another lacks.
# -fopenmp: at::parallel_for is an inline template over `#pragma omp parallel`; compiled without it, the op runs on
# one thread whatever torch.get_num_threads() says. It links libgomp.so.1, the soname torch itself loads, so the
# process still has one OpenMP runtime (as AOTInductor's own compiled graphs do).
CFLAGS = ("-O3", "-std=c++17", "-fno-math-errno", "-fopenmp")
LDFLAGS = ("-fopenmp",)
_lock = threading.Lock()
_loaded: dict[str, Path] = {}


class KernelUnavailable(RuntimeError):
    """A kernel cannot be built or loaded here (no compiler, a build error, a CPU without a required feature)."""


def cache_dir() -> Path:
    return Path(os.environ.get("NEURON_KERNEL_CACHE") or Path.home() / ".cache" / "neuron" / "kernels")


def library_name(source: Path) -> str:
    key = hashlib.sha256(source.read_bytes())
    key.update(f"torch {torch.__version__} flags {' '.join(CFLAGS)} ldflags {' '.join(LDFLAGS)}".encode())
    return f"{source.stem}_{key.hexdigest()[:16]}"


def load_library(source: Path, op: str) -> Path:
    """Build (once per cache key) and load the op library built from `source`; loading registers its ops."""
    name = library_name(source)
    with _lock:
        if name in _loaded:
            return _loaded[name]
        build_dir = cache_dir() / name
        built = build_dir / f"{name}.so"
        if not built.exists():
            _build(source, name, build_dir, op)
        torch.ops.load_library(str(built))
        _loaded[name] = built
        return built


def _build(source: Path, name: str, build_dir: Path, op: str) -> None:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise KernelUnavailable(f"{op} is built from C++ at first use, but no C++ compiler ('{compiler}', from $CXX or "
                                "c++) is on PATH; install g++ or clang++ (or set CXX), or export without this kernel")
    from torch.utils import cpp_extension

    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError as e:
        raise KernelUnavailable(f"{op} is built from C++ with ninja, which is not installed: pip install ninja "
                                "(the neuron-infer[kernels] extra)") from e
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        cpp_extension.load(name=name, sources=[str(source)], extra_cflags=list(CFLAGS),
                           extra_ldflags=list(LDFLAGS), build_directory=str(build_dir),
                           is_python_module=False, verbose=False)
    except (RuntimeError, OSError) as e:
        raise KernelUnavailable(f"building {op} from {source} failed (build dir {build_dir}): {e}") from e
