"""The compile cache: compiled graphs by key, in a local store with an optional Hub or S3 remote.

    from neuron_cache.store import CompileCache, graph_cache_key
    cache = CompileCache.from_env()
    key = graph_cache_key(config.to_dict(), shape_fields, role, bucket, backend, flags)
    path = cache.get_or_compile(key, lambda out: compile_to(out), filename="graph.pt2")

Importing this package imports neither huggingface_hub nor boto3; a remote imports its client on use.
"""

from neuron_cache.store.cache import CacheStats, CleanupReport, CompileCache
from neuron_cache.store.entry import CacheEntry
from neuron_cache.store.errors import CacheError, CorruptEntryWarning, RemoteError
from neuron_cache.store.key import NON_GRAPH_CONFIG_FIELDS, graph_cache_key, why_not_in_graph
from neuron_cache.store.remote import Remote, RetryPolicy, SyncReport, open_remote

__all__ = [
    "NON_GRAPH_CONFIG_FIELDS",
    "CacheEntry",
    "CacheError",
    "CacheStats",
    "CleanupReport",
    "CompileCache",
    "CorruptEntryWarning",
    "Remote",
    "RemoteError",
    "RetryPolicy",
    "SyncReport",
    "graph_cache_key",
    "open_remote",
    "why_not_in_graph",
]
