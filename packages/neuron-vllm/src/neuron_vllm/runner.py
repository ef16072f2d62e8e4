"""NeuronModelRunner: turns vLLM's SchedulerOutput into prefill/decode calls on an artifact's graphs.

vLLM's scheduler decides who runs; this runner maps its request ids to slots (the compiled batch
rows) and remembers every token it sampled, because the scheduler does not send them back:
`all_token_ids` arrives only for resumed requests and for ones not scheduled the step before.
vLLM schedules a long prompt in chunks (chunked prefill): each scheduled chunk is encoded in that
step through the artifact's chunked-prefill graphs, at its offset into the slot's KV rows, and the
first token is sampled when the last chunk is in. (An artifact without those graphs gets each
prompt encoded whole once all of it is scheduled.) Then the request decodes one token per step.

Prefix caching: a new request's slot is chosen by neuron-infer's PrefixCache, which knows the
tokens every slot's rows hold (running requests' and finished ones' until the slot is reused), so
a shared prefix is reused in place or copied from another slot, and only the rest is encoded.
vLLM's own prefix cache, on its block hashes, decides how many tokens it counts as computed
(`num_computed_tokens`); whatever of those the rows do not hold is encoded with the next chunk.

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT, ModelRunnerOutput

from neuron_infer.engine import BatchExecutor, DecodeEntry, SlotPool, TokenSampler
from neuron_infer.engine.prefix import PrefixCache, common_prefix
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
    prefilled: bool = False  # the prompt is in and a token was sampled: the request decodes
    encoded: int = 0  # the slot's KV positions [0, encoded) hold token_ids[:encoded]
    num_prompt_logprobs: int | None = None  # vLLM's prompt_logprobs: every position is encoded, never reused
    prompt_logprobs: Any = None  # LogprobsTensors (prompt - 1 rows) filled chunk by chunk, sent when complete


@dataclass(slots=True)
class _Step:
    """What execute_model leaves for sample_tokens."""

    so: Any
    req_ids: list[str]  # the scheduled requests
    outputs: dict[str, torch.Tensor]  # per request that samples now: logits (vocab,), or the token sampled on device
    prompt_logprobs: dict[str, Any]  # per request whose prompt was completed now and asked for prompt_logprobs


def sampler_for(params: Any) -> TokenSampler:
    """vLLM SamplingParams -> the on-device sampling row (checks.py refused everything else)."""
    if params is None or params.temperature < SAMPLING_EPS:
        return TokenSampler.greedy()
    top_k = params.top_k if params.top_k and params.top_k > 0 else 0
    sampling = SamplingParams(do_sample=True, temperature=params.temperature, top_k=top_k, top_p=params.top_p)
    return TokenSampler(sampling, params.seed)


class NeuronModelRunner:
    def __init__(self, executor: BatchExecutor, sampling: HostSampling | None = None, *,
                 prefix_caching: bool = False, min_prefix_tokens: int = 16):
        if executor.on_device_sampling != (sampling is None):
            raise ValueError("an artifact that returns logits needs vLLM's sampler (sampling=HostSampling), and one "
                             "that samples on device must not get one")
        self.executor = executor
        self.config = executor.config
        self.sampling = sampling
        self.slots = SlotPool(executor.batch_size)
        self.chunked = bool(self.config.chunk_buckets)  # the artifact can encode at an offset
        if prefix_caching and not self.chunked:
            raise ValueError("prefix caching needs the artifact's chunked-prefill graphs (re-export with "
                             "--chunk-buckets), or serve with --no-enable-prefix-caching")
        self.prefix_caching = prefix_caching
        # Kept up to date whether or not prefix caching is on: it also says which rows a full-batch decode must
        # leave as they are (`hold_rows`).
        self.prefix = PrefixCache(executor.batch_size, min_tokens=min_prefix_tokens)
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
        chunks: list[tuple[str, int]] = []
        for rid in req_ids:
            seq = self.seqs[rid]
            upto = computed.get(rid, 0) + so.num_scheduled_tokens[rid]
            if seq.prefilled:
                decodes[seq.slot] = rid
            elif upto >= len(seq.token_ids):
                prefills.append(rid)
            elif self.chunked:
                chunks.append((rid, upto))  # a chunk of a longer prompt: encoded now, nothing sampled
            # else: no chunk graphs; the prompt is encoded whole when its last chunk is scheduled.
        outputs: dict[str, torch.Tensor] = {}
        if decodes:
            # Decode before prefilling, so this step's prefills are not yet live. Every other row that holds
            # something (a live sequence sampling nothing now, a prompt half encoded, a finished request's
            # reusable prefix) rewrites its own last entry if the graph runs it (see BatchExecutor.decode_raw).
            hold = self.prefix.hold_rows(s for s in range(self.slots.size) if s not in decodes)
            outputs.update(self._decode(decodes, hold))
        for rid, upto in chunks:
            self._encode(self.seqs[rid], upto)
        prompt_logprobs = {}
        for rid in prefills:
            seq = self.seqs[rid]
            outputs[rid] = self._prefill(rid, seq)
            if seq.prompt_logprobs is not None:
                prompt_logprobs[rid], seq.prompt_logprobs, seq.num_prompt_logprobs = seq.prompt_logprobs, None, None
        self._step = _Step(so, req_ids, outputs, prompt_logprobs)
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
                                 sampled_token_ids=sampled, logprobs=logprobs,
                                 prompt_logprobs_dict=step.prompt_logprobs)

    def _decode(self, decodes: dict[int, str], hold: dict[int, tuple[int, int]]) -> dict[str, torch.Tensor]:
        seqs = {slot: self.seqs[rid] for slot, rid in decodes.items()}
        if self.sampling is None:
            entries = {slot: DecodeEntry(s.token_ids[-1], len(s.token_ids) - 1, s.sampler) for slot, s in seqs.items()}
            out = self.executor.decode(entries, hold)
            for slot, s in seqs.items():
                self.prefix.advance(slot, len(s.token_ids))
                s.encoded = len(s.token_ids)
            return {rid: torch.tensor(out[slot].token) for slot, rid in decodes.items()}
        slots = list(decodes)
        tokens = torch.tensor([seqs[s].token_ids[-1] for s in slots], dtype=torch.long)
        positions = torch.tensor([len(seqs[s].token_ids) - 1 for s in slots], dtype=torch.long)
        logits = self.executor.decode_raw(slots, tokens, positions, hold=hold).float()  # (n, vocab)
        for slot in slots:  # each wrote its last token's row
            self.prefix.advance(slot, len(seqs[slot].token_ids))
            seqs[slot].encoded = len(seqs[slot].token_ids)
        return {decodes[slot]: logits[i] for i, slot in enumerate(slots)}

    # ---- request bookkeeping -----------------------------------------------------------------
    def _add(self, rid: str, prompt: list[int], params: Any) -> None:
        if rid in self.seqs:  # a re-added id: start over rather than mix two requests' state
            self._drop(rid)
        seq = _Sequence(sampler_for(params) if self.sampling is None else None, prompt)
        k = getattr(params, "prompt_logprobs", None)
        if k is not None and self.sampling is not None and len(prompt) > 1:  # (checks.py refused the rest)
            from vllm.v1.outputs import LogprobsTensors

            seq.num_prompt_logprobs = self.sampling.vocab_size if k == -1 else k
            seq.prompt_logprobs = LogprobsTensors.empty_cpu(len(prompt) - 1, seq.num_prompt_logprobs + 1)
        self.seqs[rid] = seq
        self._acquire(rid)

    def _sync(self, rid: str, all_token_ids: list[int] | None, resumed: bool) -> None:
        seq = self.seqs.get(rid)
        if seq is None:
            raise RuntimeError(f"vLLM scheduled request {rid} that this worker never saw as new")
        if all_token_ids is not None and list(all_token_ids) != seq.token_ids:
            # The scheduler's tokens are authoritative; ours may lag after a preemption. The rows keep what
            # both agree on.
            seq.encoded = common_prefix(seq.token_ids[:seq.encoded], all_token_ids)
            seq.token_ids, seq.prefilled = list(all_token_ids), False
            if seq.slot is not None:
                self.prefix.record(seq.slot, seq.token_ids, seq.encoded)
        if resumed:
            seq.prefilled = False
        if seq.slot is None:
            self._acquire(rid)

    def _acquire(self, rid: str) -> None:
        seq = self.seqs[rid]
        if not self.slots.num_free:  # checks.py keeps max_num_seqs <= batch_size, so this is a bug
            raise RuntimeError(f"no free slot for request {rid}: all {self.slots.size} slots are busy "
                               f"({sorted(self.seqs)})")
        plan = self.prefix.plan(seq.token_ids, self.slots.free,
                                enabled=self.prefix_caching and seq.num_prompt_logprobs is None)
        seq.slot = self.slots.acquire(plan.slot)
        if plan.source is not None:
            self.executor.copy_kv(plan.source, plan.slot, plan.reuse)
        seq.encoded = plan.reuse
        self.prefix.record(seq.slot, seq.token_ids, seq.encoded)

    def _release(self, rid: str) -> None:
        seq = self.seqs.get(rid)
        if seq is not None and seq.slot is not None:
            self.slots.release(seq.slot)  # its rows keep what they hold (PrefixCache) until the slot is reused
            seq.slot, seq.prefilled, seq.encoded = None, False, 0

    def _drop(self, rid: str) -> None:
        self._release(rid)
        self.seqs.pop(rid, None)

    def _encode(self, seq: _Sequence, upto: int) -> None:
        """A chunk of a prompt vLLM scheduled over several steps: encode what the rows lack of token_ids[:upto]."""
        if upto > seq.encoded:
            logits = self.executor.encode(seq.slot, seq.token_ids[seq.encoded:upto], seq.encoded)
            self._prompt_logprobs(seq, logits, seq.encoded)
            seq.encoded = upto
            self.prefix.record(seq.slot, seq.token_ids, upto)

    def _prompt_logprobs(self, seq: _Sequence, logits: torch.Tensor, start: int) -> None:
        """Fill the prompt logprobs of positions start.. from their logits: position i scores prompt token i + 1."""
        if seq.prompt_logprobs is None:
            return
        m = min(len(logits), len(seq.prompt_logprobs.logprobs) - start)  # the last prompt position scores no token
        if m <= 0:
            return
        ids, values, ranks = self.sampling.prompt_logprobs(logits[:m], seq.token_ids[start + 1:start + 1 + m],
                                                           seq.num_prompt_logprobs)
        rows = slice(start, start + m)
        seq.prompt_logprobs.logprob_token_ids[rows] = ids
        seq.prompt_logprobs.logprobs[rows] = values
        seq.prompt_logprobs.selected_token_ranks[rows] = ranks

    def _prefill(self, rid: str, seq: _Sequence) -> torch.Tensor:
        """Encode the rest of token_ids (all of it, or what follows a reused prefix or earlier chunks): logits
        (vocab,) at the last token, or the token sampled on device."""
        n, start = len(seq.token_ids), seq.encoded
        if n > self.executor.runtime.max_prompt_length:
            # Only a resumed request can get here (the front end refuses longer prompts).
            raise RuntimeError(f"request {rid} needs a prefill of {n} tokens, over the {self.executor.runtime.max_prompt_length} "
                               "this artifact encodes")
        if self.sampling is None:  # (past the largest bucket or a reused prefix the host picks: BatchExecutor)
            out = torch.tensor(self.executor.prefill(seq.slot, seq.token_ids, seq.sampler, start=start).token)
        elif seq.num_prompt_logprobs is None:
            out = self.executor.prefill_logits(seq.slot, seq.token_ids, start)
        else:  # every position's logits: the chunked-prefill graphs
            logits = self.executor.encode(seq.slot, seq.token_ids[start:], start)
            self._prompt_logprobs(seq, logits, start)
            out = logits[-1]
        seq.prefilled, seq.encoded = True, n
        self.prefix.record(seq.slot, seq.token_ids, n)
        return out

    # ---- status --------------------------------------------------------------------------------
    @property
    def busy_slots(self) -> dict[int, str]:
        return {seq.slot: rid for rid, seq in self.seqs.items() if seq.slot is not None}

    def _publish(self) -> None:
        """Write slot occupancy to $NEURON_VLLM_STATUS_FILE when it changes (atomic rename)."""
        busy = self.busy_slots
        key = (tuple(sorted(busy.items())), self.prefix.stats.queries)
        if key == self._published:
            return
        self._published = key
        logger.debug("neuron-vllm: %d/%d slots busy", len(busy), self.slots.size)
        if not self._status_file:
            return
        status = {"slots": self.slots.size, "busy": {str(s): r for s, r in sorted(busy.items())},
                  "free": self.slots.num_free, "steps": self.steps, "pid": os.getpid(),
                  "prefix_cache": {**asdict(self.prefix.stats), "enabled": self.prefix_caching}}
        path = Path(self._status_file)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".status-")
        with os.fdopen(fd, "w") as f:
            json.dump(status, f)
        os.replace(tmp, path)

