"""NeuronModelRunner: turns vLLM's SchedulerOutput into prefill/decode calls on an artifact's graphs.

vLLM's scheduler decides who runs; this runner maps its request ids to slots (the compiled batch
rows) and remembers every token it sampled, because the scheduler does not send them back:
`all_token_ids` arrives only for resumed requests and for ones not scheduled the step before.
A request is prefilled once its whole prompt is scheduled (a chunked prompt just accumulates),
then decodes one token per step at its own position.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuron_infer.engine import BatchExecutor, DecodeEntry, SlotPool, StepResult, TokenSampler
from neuron_infer.sampling import SamplingParams
from neuron_vllm.logprobs import logprobs_lists

logger = logging.getLogger("vllm.neuron_vllm.runner")

SAMPLING_EPS = 1e-5  # vLLM treats a smaller temperature as greedy
STATUS_ENV = "NEURON_VLLM_STATUS_FILE"  # where to publish slot occupancy (tests, health checks)


@dataclass(slots=True)
class _Sequence:
    sampler: TokenSampler
    num_logprobs: int | None
    token_ids: list[int]  # prompt + every token sampled so far
    slot: int | None = None
    prefilled: bool = False  # the slot's KV rows hold token_ids[:-1]


def sampler_for(params: Any) -> TokenSampler:
    """vLLM SamplingParams -> neuron-infer's TokenSampler (checks.py already refused the rest)."""
    if params is None or params.temperature < SAMPLING_EPS:
        return TokenSampler.greedy()
    top_k = params.top_k if params.top_k and params.top_k > 0 else 0
    sampling = SamplingParams(do_sample=True, temperature=params.temperature, top_k=top_k, top_p=params.top_p)
    return TokenSampler(sampling, params.seed)


class NeuronModelRunner:
    def __init__(self, executor: BatchExecutor):
        self.executor = executor
        self.config = executor.config
        self.slots = SlotPool(executor.batch_size)
        self.seqs: dict[str, _Sequence] = {}
        self.steps = 0
        self._status_file = os.environ.get(STATUS_ENV)
        self._published: tuple[Any, ...] | None = None
        self._publish()

    # ---- one scheduler step ------------------------------------------------------------------
    def execute(self, so: Any) -> tuple[list[str], list[list[int]], Any]:
        """SchedulerOutput -> (req_ids, sampled token ids per request, LogprobsLists | None)."""
        for rid in so.finished_req_ids:
            self._drop(rid)
        for rid in so.preempted_req_ids or ():
            self._release(rid)  # keeps the tokens and sampler: the request comes back as resumed
        computed: dict[str, int] = {}
        for new in so.scheduled_new_reqs:
            self._add(new.req_id, list(new.prompt_token_ids or ()), new.sampling_params)
            computed[new.req_id] = new.num_computed_tokens
        cached = so.scheduled_cached_reqs
        for i, rid in enumerate(cached.req_ids):
            computed[rid] = cached.num_computed_tokens[i]
            self._sync(rid, cached.all_token_ids.get(rid), rid in cached.resumed_req_ids)

        req_ids = list(so.num_scheduled_tokens)
        decodes: dict[int, tuple[str, DecodeEntry]] = {}
        prefills: list[str] = []
        for rid in req_ids:
            seq = self.seqs[rid]
            if seq.prefilled:
                decodes[seq.slot] = (rid, DecodeEntry(seq.token_ids[-1], len(seq.token_ids) - 1, seq.sampler))
            elif computed.get(rid, 0) + so.num_scheduled_tokens[rid] >= len(seq.token_ids):
                prefills.append(rid)
            # else: a chunk of a longer prompt; prefill when the last chunk is scheduled.
        results: dict[str, StepResult] = {}
        if decodes:
            # Decode before prefilling, so this step's prefills are not yet live. Live sequences
            # that sample nothing now keep their KV rows (see BatchExecutor.decode).
            hold = {seq.slot: (seq.token_ids[-1], len(seq.token_ids) - 1) for seq in self.seqs.values()
                    if seq.prefilled and seq.slot is not None and seq.slot not in decodes}
            out = self.executor.decode({slot: entry for slot, (_, entry) in decodes.items()}, hold)
            for slot, (rid, _) in decodes.items():
                results[rid] = out[slot]
        for rid in prefills:
            results[rid] = self._prefill(rid, self.seqs[rid])
        sampled = []
        for rid in req_ids:
            if rid in results:
                self.seqs[rid].token_ids.append(results[rid].token)
                sampled.append([results[rid].token])
            else:
                sampled.append([])
        self.steps += 1
        self._publish()
        return req_ids, sampled, self._logprobs(req_ids, results)

    # ---- request bookkeeping -----------------------------------------------------------------
    def _add(self, rid: str, prompt: list[int], params: Any) -> None:
        if rid in self.seqs:  # a re-added id: start over rather than mix two requests' state
            self._drop(rid)
        num_logprobs = getattr(params, "logprobs", None)
        self.seqs[rid] = _Sequence(sampler_for(params), num_logprobs, prompt)
        self._acquire(rid)

    def _sync(self, rid: str, all_token_ids: list[int] | None, resumed: bool) -> None:
        seq = self.seqs.get(rid)
        if seq is None:
            raise RuntimeError(f"vLLM scheduled request {rid} that this worker never saw as new")
        if all_token_ids is not None and list(all_token_ids) != seq.token_ids:
            # The scheduler's tokens are authoritative; ours may lag after a preemption.
            seq.token_ids, seq.prefilled = list(all_token_ids), False
        if resumed:
            seq.prefilled = False
        if seq.slot is None:
            self._acquire(rid)

    def _acquire(self, rid: str) -> None:
        slot = self.slots.acquire()
        if slot is None:  # checks.py keeps max_num_seqs <= batch_size, so this is a bug
            raise RuntimeError(f"no free slot for request {rid}: all {self.slots.size} slots are busy "
                               f"({sorted(self.seqs)})")
        self.seqs[rid].slot = slot

    def _release(self, rid: str) -> None:
        seq = self.seqs.get(rid)
        if seq is not None and seq.slot is not None:
            self.slots.release(seq.slot)
            seq.slot, seq.prefilled = None, False

    def _drop(self, rid: str) -> None:
        self._release(rid)
        self.seqs.pop(rid, None)

    def _prefill(self, rid: str, seq: _Sequence) -> StepResult:
        limit = self.config.max_context_length
        if len(seq.token_ids) > limit:
            # Only a resumed request can get here (the front end refuses long prompts).
            raise RuntimeError(f"request {rid} needs a prefill of {len(seq.token_ids)} tokens, over the artifact's "
                               f"max_context_length={limit}")
        result = self.executor.prefill(seq.slot, seq.token_ids, seq.sampler)
        seq.prefilled = True
        return result

    # ---- outputs -----------------------------------------------------------------------------
    def _logprobs(self, req_ids: list[str], results: dict[str, StepResult]) -> Any:
        wanted = [self.seqs[r].num_logprobs for r in req_ids if r in results and self.seqs[r].num_logprobs is not None]
        if not wanted:
            return None
        rows = [(results[r].logits, results[r].token) if r in results else (None, 0) for r in req_ids]
        return logprobs_lists(rows, max(wanted))

    @property
    def busy_slots(self) -> dict[int, str]:
        return {seq.slot: rid for rid, seq in self.seqs.items() if seq.slot is not None}

    def _publish(self) -> None:
        """Write slot occupancy to $NEURON_VLLM_STATUS_FILE when it changes (atomic rename)."""
        busy = self.busy_slots
        key = tuple(sorted(busy.items()))
        if key == self._published:
            return
        self._published = key
        logger.debug("neuron-vllm: %d/%d slots busy", len(busy), self.slots.size)
        if not self._status_file:
            return
        status = {"slots": self.slots.size, "busy": {str(s): r for s, r in sorted(busy.items())},
                  "free": self.slots.num_free, "steps": self.steps, "pid": os.getpid()}
        path = Path(self._status_file)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".status-")
        with os.fdopen(fd, "w") as f:
            json.dump(status, f)
        os.replace(tmp, path)

