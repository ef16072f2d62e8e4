"""Session-wide isolation: the compile cache and HF caches of a test run live in a temporary directory.

A test run must neither read graphs compiled by an earlier run (a warm cache could hide a compile
bug) nor leave entries in the user's ~/.cache/neuron. Within one session, tests share the cache,
which is exactly what lets several tests reuse one SmolLM2 compile.
"""

from __future__ import annotations

import os
import tempfile

_SESSION_CACHE = tempfile.mkdtemp(prefix="neuron-test-cache-")
os.environ["XDG_CACHE_HOME"] = _SESSION_CACHE
os.environ.pop("NEURON_COMPILE_CACHE_URL", None)
os.environ.pop("NEURON_COMPILE_CACHE_DIR", None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest_plugins = ["support.fixtures"]
