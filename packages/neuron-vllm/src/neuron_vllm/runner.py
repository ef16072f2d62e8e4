"""NeuronModelRunner: turns vLLM's SchedulerOutput into prefill/decode calls on an artifact's graphs.

vLLM's scheduler decides who runs; this runner maps its request ids to slots (the compiled batch
rows) and remembers every token it sampled, because the scheduler does not send them back:
`all_token_ids` arrives only for resumed requests and for ones not scheduled the step before.
A request is prefilled once its whole prompt is scheduled (a chunked prompt just accumulates),
then decodes one token per step at its own position.

Like vLLM's own model runners, a step is two calls: `execute_model` runs the graphs and keeps
their outputs, `sample_tokens(grammar_output)` turns them into tokens. An artifact that returns
logits is sampled by vLLM's own Sampler (sampling.py, every vLLM sampling feature and the
structured-output bitmask); one that samples on device returns tokens, drawn with each request's
TokenSampler row (checks.py refuses what such a graph cannot do).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT, ModelRunnerOutput

from neuron_infer.engine import BatchExecutor, DecodeEntry, SlotPool, TokenSampler
from neuron_infer.sampling import SamplingParams
from neuron_vllm.sampling import HostSampling

logger = logging.getLogger("vllm.neuron_vllm.runner")

SAMPLING_EPS = 1e-5  # vLLM treats a smaller temperature as greedy
STATUS_ENV = "NEURON_VLLM_STATUS_FILE"  # where to publish slot occupancy (tests, health checks)


@dataclass(slots=True)
class _Sequence:
    sampler: TokenSampler | None  # on-device sampling only; vLLM's Sampler keeps the rest (sampling.py)
    token_ids: list[int]  # prompt + every token sampled so far
    slot: int | None = None
    prefilled: bool = False  # the slot's KV rows hold token_ids[:-1]


@dataclass(slots=True)
class _Step:
    """What execute_model leaves for sample_tokens."""

    so: Any
    req_ids: list[str]  # the scheduled requests
    outputs: dict[str, torch.Tensor]  # per request that samples now: logits (vocab,), or the token sampled on device


def sampler_for(params: Any) -> TokenSampler:
    """vLLM SamplingParams -> the on-device sampling row (checks.py refused everything else)."""
    if params is None or params.temperature < SAMPLING_EPS:
        return TokenSampler.greedy()
    top_k = params.top_k if params.top_k and params.top_k > 0 else 0
    sampling = SamplingParams(do_sample=True, temperature=params.temperature, top_k=top_k, top_p=params.top_p)
    return TokenSampler(sampling, params.seed)


class NeuronModelRunner:
    def __init__(self, executor: BatchExecutor, sampling: HostSampling | None = None):
        if executor.on_device_sampling != (sampling is None):
            raise ValueError("an artifact that returns logits needs vLLM's sampler (sampling=HostSampling), and one "
                             "that samples on device must not get one")
        self.executor = executor
        self.config = executor.config
        self.sampling = sampling
        self.slots = SlotPool(executor.batch_size)
        self.seqs: dict[str, _Sequence] = {}
        self.steps = 0
        self._step: _Step | None = None
        self._status_file = os.environ.get(STATUS_ENV)
        self._published: tuple[Any, ...] | None = None
        self._publish()

    # ---- one scheduler step ------------------------------------------------------------------
    def execute_model(self, so: Any) -> ModelRunnerOutput | None:
        """Run the graphs for a SchedulerOutput; None means: call sample_tokens next (vLLM's protocol)."""
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
        if self.sampling is not None:
            self.sampling.update(so)
        if not so.num_scheduled_tokens:
            self._publish()
            return EMPTY_MODEL_RUNNER_OUTPUT

        req_ids = list(so.num_scheduled_tokens)
        decodes: dict[int, str] = {}
        prefills: list[str] = []
        for rid in req_ids:
            seq = self.seqs[rid]
            if seq.prefilled:
                decodes[seq.slot] = rid
            elif computed.get(rid, 0) + so.num_scheduled_tokens[rid] >= len(seq.token_ids):
                prefills.append(rid)
            # else: a chunk of a longer prompt; prefill when the last chunk is scheduled.
        outputs: dict[str, torch.Tensor] = {}
        if decodes:
            # Decode before prefilling, so this step's prefills are not yet live. Live sequences
            # that sample nothing now keep their KV rows (see BatchExecutor.decode_raw).
            hold = {seq.slot: (seq.token_ids[-1], len(seq.token_ids) - 1) for seq in self.seqs.values()
                    if seq.prefilled and seq.slot is not None and seq.slot not in decodes}
            outputs.update(self._decode(decodes, hold))
        for rid in prefills:
            outputs[rid] = self._prefill(rid, self.seqs[rid])
        self._step = _Step(so, req_ids, outputs)
        return None

    def sample_tokens(self, grammar_output: Any = None) -> ModelRunnerOutput:
        """Tokens for the step execute_model ran: vLLM's Sampler on the logits (with the grammar bitmask of
        structured-output requests), or the tokens the graph sampled."""
        step, self._step = self._step, None
        if step is None:
            return EMPTY_MODEL_RUNNER_OUTPUT
        if self.sampling is None:
            req_ids, logprobs = step.req_ids, None
            sampled = [[int(step.outputs[r])] if r in step.outputs else [] for r in req_ids]
        else:
            req_ids = self.sampling.req_ids  # vLLM's batch order, which its metadata and bitmask follow
            logits = torch.zeros(len(req_ids), self.sampling.vocab_size)
            for i, rid in enumerate(req_ids):
                if rid in step.outputs:
                    logits[i] = step.outputs[rid]
            sampled, logprobs = self.sampling.sample(logits, set(step.outputs), step.so, grammar_output)
        for rid, ids in zip(req_ids, sampled):
            self.seqs[rid].token_ids.extend(ids)
        self.steps += 1
        self._publish()
        return ModelRunnerOutput(req_ids=req_ids, req_id_to_index={r: i for i, r in enumerate(req_ids)},
                                 sampled_token_ids=sampled, logprobs=logprobs, prompt_logprobs_dict={})

    def _decode(self, decodes: dict[int, str], hold: dict[int, tuple[int, int]]) -> dict[str, torch.Tensor]:
        seqs = {slot: self.seqs[rid] for slot, rid in decodes.items()}
        if self.sampling is None:
            entries = {slot: DecodeEntry(s.token_ids[-1], len(s.token_ids) - 1, s.sampler) for slot, s in seqs.items()}
            out = self.executor.decode(entries, hold)
            return {rid: torch.tensor(out[slot].token) for slot, rid in decodes.items()}
        slots = list(decodes)
        tokens = torch.tensor([seqs[s].token_ids[-1] for s in slots], dtype=torch.long)
        positions = torch.tensor([len(seqs[s].token_ids) - 1 for s in slots], dtype=torch.long)
        logits = self.executor.decode_raw(slots, tokens, positions, hold=hold).float()  # (n, vocab)
        return {decodes[slot]: logits[i] for i, slot in enumerate(slots)}

    # ---- request bookkeeping -----------------------------------------------------------------
    def _add(self, rid: str, prompt: list[int], params: Any) -> None:
        if rid in self.seqs:  # a re-added id: start over rather than mix two requests' state
            self._drop(rid)
        self.seqs[rid] = _Sequence(sampler_for(params) if self.sampling is None else None, prompt)
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

    def _prefill(self, rid: str, seq: _Sequence) -> torch.Tensor:
        """Prefill the slot with every token so far: logits (vocab,) at the last one, or the token sampled on
        device. (prompt_logprobs will want every position: BatchExecutor.encode, once it exists.)"""
        limit = self.config.max_context_length
        if len(seq.token_ids) > limit:
            # Only a resumed request can get here (the front end refuses long prompts).
            raise RuntimeError(f"request {rid} needs a prefill of {len(seq.token_ids)} tokens, over the artifact's "
                               f"max_context_length={limit}")
        if self.sampling is None:
            out = torch.tensor(self.executor.prefill(seq.slot, seq.token_ids, seq.sampler).token)
        else:
            out = self.executor.prefill_raw(seq.slot, torch.tensor(seq.token_ids, dtype=torch.long)).float()
        seq.prefilled = True
        return out

    # ---- status --------------------------------------------------------------------------------
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

