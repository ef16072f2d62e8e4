"""EncoderModelRunner: vLLM's pooling steps run as one encoder pass over every scheduled prompt.

An embedding artifact has no KV cache and no decode: the worker reports an empty KV spec, so vLLM's
scheduler never chunks a prompt (chunked prefill is off for a model without a cache) and schedules
each request whole, as many per step as max_num_seqs and max_num_batched_tokens allow. This runner
keeps each new request's prompt token ids, runs the artifact's encoder once per step over all the
scheduled prompts (neuron-infer picks the (rows, bucket) graph), and answers every request in that
step: `ModelRunnerOutput.pooler_output[i]` is request i's embedding, a float32 CPU tensor, after
which vLLM's scheduler finishes it.

PoolingParams are applied as vLLM's own embed head does (EmbeddingPoolerHead): `dimensions` keeps the
first dimensions (matryoshka; vLLM's front end refuses it for a model that is not), then
`use_activation` L2-normalizes. The front end fills use_activation from the pooler config, which
the platform sets to the artifact's own default (`pooling.normalize`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT, ModelRunnerOutput

from neuron_vllm.runner import STATUS_ENV

logger = logging.getLogger("vllm.neuron_vllm.encoder_runner")


class Embedder(Protocol):
    """What the runner needs of neuron-infer's EncoderRuntime."""

    max_rows: int
    max_length: int

    def embed(self, token_ids: list[list[int]], normalize: bool | None = None) -> torch.Tensor: ...


@dataclass(slots=True)
class EncoderStats:
    steps: int = 0  # steps that ran the encoder
    requests: int = 0
    max_batch: int = 0  # the most requests one step embedded
    batches: Counter = field(default_factory=Counter)  # requests per step -> steps


@dataclass(slots=True)
class _Request:
    prompt: list[int]
    dimensions: int | None
    normalize: bool


class EncoderModelRunner:
    def __init__(self, runtime: Embedder, *, normalize: bool):
        self.runtime = runtime
        self.normalize = normalize  # the artifact's default, for a request whose use_activation is unset
        self.requests: dict[str, _Request] = {}
        self.stats = EncoderStats()
        self._status_file = os.environ.get(STATUS_ENV)
        self._publish()

    def execute_model(self, so: Any) -> ModelRunnerOutput:
        for rid in so.finished_req_ids:
            self.requests.pop(rid, None)
        for new in so.scheduled_new_reqs:
            self.requests[new.req_id] = self._request(new)
        if not so.num_scheduled_tokens:
            return EMPTY_MODEL_RUNNER_OUTPUT
        req_ids = list(so.num_scheduled_tokens)
        computed = {new.req_id: new.num_computed_tokens for new in so.scheduled_new_reqs}
        cached = so.scheduled_cached_reqs
        computed.update(zip(cached.req_ids, cached.num_computed_tokens))
        # Without a KV cache vLLM schedules every prompt whole; a part of one (never expected) waits for the rest.
        ready = [r for r in req_ids if computed.get(r, 0) + so.num_scheduled_tokens[r] >= len(self.requests[r].prompt)]
        embeddings = self.embed([self.requests[r] for r in ready]) if ready else []
        out: dict[str, torch.Tensor] = dict(zip(ready, embeddings))
        return ModelRunnerOutput(req_ids=req_ids, req_id_to_index={r: i for i, r in enumerate(req_ids)},
                                 pooler_output=[out.get(r) for r in req_ids])

    def embed(self, requests: list[_Request]) -> list[torch.Tensor]:
        """One encoder pass over the requests' prompts (in graphs of at most max_rows), then each request's
        dimensions and normalization."""
        pooled = []
        for i in range(0, len(requests), self.runtime.max_rows):
            part = requests[i:i + self.runtime.max_rows]
            pooled.extend(self.runtime.embed([r.prompt for r in part], normalize=False).float())
        results = []
        for request, vector in zip(requests, pooled):
            if request.dimensions is not None:
                vector = vector[:request.dimensions]
            if request.normalize:
                vector = torch.nn.functional.normalize(vector, p=2, dim=-1)
            results.append(vector.contiguous())
        self._count(len(requests))
        return results

    def _request(self, new: Any) -> _Request:
        params = new.pooling_params
        if params is None or new.prompt_token_ids is None:
            # checks.py refuses these in the front end; reaching here is a bug, named rather than guessed at.
            raise RuntimeError(f"request {new.req_id}: an embedding artifact needs pooling params and prompt token "
                               f"ids (got pooling_params={params!r}, prompt_token_ids "
                               f"{'missing' if new.prompt_token_ids is None else 'given'})")
        prompt = list(new.prompt_token_ids)
        if len(prompt) > self.runtime.max_length:  # vLLM's max_model_len refuses these first
            raise RuntimeError(f"request {new.req_id}: {len(prompt)} tokens exceed the artifact's max_context_length="
                               f"{self.runtime.max_length}")
        use_activation = params.use_activation
        return _Request(prompt, params.dimensions, self.normalize if use_activation is None else bool(use_activation))

    # ---- status --------------------------------------------------------------------------------
    def _count(self, n: int) -> None:
        s = self.stats
        s.steps, s.requests, s.max_batch = s.steps + 1, s.requests + n, max(s.max_batch, n)
        s.batches[n] += 1
        logger.debug("neuron-vllm: embedded %d requests in one step", n)
        self._publish()

    def _publish(self) -> None:
        """Write the step statistics to $NEURON_VLLM_STATUS_FILE (atomic rename), for tests and health checks."""
        if not self._status_file:
            return
        s = self.stats
        status = {"task": "embed", "steps": s.steps, "requests": s.requests, "max_batch": s.max_batch,
                  "batches": {str(k): v for k, v in sorted(s.batches.items())}, "busy": {}, "pid": os.getpid()}
        path = Path(self._status_file)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".status-")
        with os.fdopen(fd, "w") as f:
            json.dump(status, f)
        os.replace(tmp, path)
