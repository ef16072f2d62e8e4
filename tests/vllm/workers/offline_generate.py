"""Run vLLM's offline LLM API on prompts given as token ids; write the generated ids as JSON.

Run as a script (vLLM spawns its engine core, which re-imports __main__: hence the guard):
    python offline_generate.py SPEC.json OUT.json
SPEC: {"model", "max_num_seqs", "max_model_len", "dtype", "prompts": [[ids]], "max_tokens": [n],
       "logprobs": int | null}
"""

from __future__ import annotations

import json
import sys
import time


def main(spec_path: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    spec = json.loads(open(spec_path).read())
    t = time.perf_counter()
    llm = LLM(model=spec["model"], max_num_seqs=spec["max_num_seqs"], max_model_len=spec["max_model_len"],
              dtype=spec["dtype"], seed=0, enforce_eager=True)
    started = time.perf_counter() - t
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, logprobs=spec.get("logprobs"))
              for n in spec["max_tokens"]]
    t = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in spec["prompts"]], params, use_tqdm=False)
    result = {
        "platform": type(__import__("vllm.platforms", fromlist=["current_platform"]).current_platform).__name__,
        "token_ids": [list(o.outputs[0].token_ids) for o in outs],
        "text": [o.outputs[0].text for o in outs],
        "logprobs": [
            [{str(k): v.logprob for k, v in step.items()} for step in (o.outputs[0].logprobs or [])] for o in outs
        ],
        "start_s": started,
        "generate_s": time.perf_counter() - t,
    }
    open(out_path, "w").write(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
