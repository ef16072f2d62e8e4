"""Build vLLM engine configs (no engine is started) and report what the platform decided, as JSON.

    python engine_config.py CASES.json OUT.json
CASES: [{"model": ..., "args": {EngineArgs fields}}]; each result: platform, worker_cls,
prefix_caching, block_size, num_gpu_blocks_override, or the error message the config raised.
"""

from __future__ import annotations

import json
import sys


def main(cases_path: str, out_path: str) -> None:
    from vllm.engine.arg_utils import EngineArgs
    from vllm.platforms import current_platform

    results = []
    for case in json.loads(open(cases_path).read()):
        try:
            config = EngineArgs(model=case["model"], **case["args"]).create_engine_config()
            results.append({"worker_cls": config.parallel_config.worker_cls,
                            "prefix_caching": config.cache_config.enable_prefix_caching,
                            "block_size": config.cache_config.block_size,
                            "num_gpu_blocks_override": config.cache_config.num_gpu_blocks_override})
        except Exception as err:  # report, do not stop: each case is independent
            results.append({"error": f"{type(err).__name__}: {err}"})
    register = None
    try:
        import neuron_vllm

        register = neuron_vllm.register()
    except ImportError:
        pass
    out = {"platform": type(current_platform).__name__, "register": register, "results": results}
    open(out_path, "w").write(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
