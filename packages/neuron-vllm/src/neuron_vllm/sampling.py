"""vLLM's own sampling over the artifact's logits, for artifacts that return logits.

vLLM's model runners keep a persistent `InputBatch` (sampling parameters, per-request generators,
output tokens, the builtin logits processors min_p / logit_bias / min_tokens) and feed its
`SamplingMetadata` with one logits row per scheduled request, in the batch's row order, to
`vllm.v1.sample.sampler.Sampler` (allowed_token_ids, bad_words, penalties, temperature, top-k/p,
seeds, logprobs in the configured logprobs_mode). This module does the same with vLLM's classes:
`update` mirrors what `GPUModelRunner._update_states` does for sampling, `sample` what its
`sample_tokens` and `_bookkeeping_sync` do (grammar bitmask, sampler, discarded rows, output tokens).
No blocks, speculative tokens or async scheduling: the platform turns those off.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.sampling_params import SamplingType
from vllm.v1.outputs import LogprobsLists
from vllm.v1.sample.logits_processor import LogitsProcessors, build_logitsprocs
from vllm.v1.sample.sampler import Sampler
from vllm.v1.structured_output.utils import apply_grammar_bitmask
from vllm.v1.worker.gpu_input_batch import CachedRequestState, InputBatch

CPU = torch.device("cpu")


class HostSampling:
    """One vLLM InputBatch + Sampler; rows are `batch.req_ids` (the scheduled requests), in that order."""

    def __init__(self, *, max_num_reqs: int, max_model_len: int, vocab_size: int, logitsprocs: LogitsProcessors,
                 logitsprocs_need_output_token_ids: bool = False, logprobs_mode: str = "raw_logprobs",
                 reasoning_config: Any = None):
        # No KV blocks: the artifact owns its cache, so the batch keeps no block table (zero groups).
        self.batch = InputBatch(max_num_reqs=max_num_reqs, max_model_len=max_model_len,
                                max_num_batched_tokens=max_model_len * max_num_reqs, device=CPU,
                                vocab_size=vocab_size, block_sizes=[], max_num_blocks_per_req=[],
                                logitsprocs=logitsprocs,
                                logitsprocs_need_output_token_ids=logitsprocs_need_output_token_ids,
                                reasoning_config=reasoning_config)
        self.sampler = Sampler(logprobs_mode=logprobs_mode)
        self.requests: dict[str, CachedRequestState] = {}

    @classmethod
    def from_config(cls, vllm_config: Any) -> HostSampling:
        """As vLLM's GPU/CPU model runner builds its InputBatch and Sampler from the VllmConfig."""
        model, sched = vllm_config.model_config, vllm_config.scheduler_config
        custom = tuple(model.logits_processors or ())
        return cls(max_num_reqs=sched.max_num_seqs, max_model_len=model.max_model_len,
                   vocab_size=model.get_vocab_size(),
                   logitsprocs=build_logitsprocs(vllm_config, CPU, False, False, custom),
                   logitsprocs_need_output_token_ids=bool(custom), logprobs_mode=model.logprobs_mode,
                   reasoning_config=vllm_config.reasoning_config)

    def prompt_logprobs(self, logits: torch.Tensor, targets: list[int], k: int) -> tuple[torch.Tensor, ...]:
        """Prompt logprobs of one chunk the way vLLM's model runner computes them: `logits` (m, vocab) at m prompt
        positions, `targets` the m tokens that follow them; returns (token ids (m, k+1), values (m, k+1), ranks (m,)).
        Prompt tokens skip the sampling processors, so processed and raw modes give the same scores."""
        scores = logits.float() if self.sampler.logprobs_mode in ("raw_logits", "processed_logits") else \
            self.sampler.compute_logprobs(logits.float())
        ids, values, ranks, *_ = self.sampler.gather_logprobs(scores, k, torch.tensor(targets, dtype=torch.long))
        return ids, values, ranks

    @property
    def vocab_size(self) -> int:
        return self.batch.vocab_size

    @property
    def req_ids(self) -> list[str]:
        """The order `sample` expects its logits rows in (valid after `update`)."""
        return list(self.batch.req_ids)

    # ---- batch state, as GPUModelRunner._update_states keeps it --------------------------------
    def update(self, so: Any) -> None:
        batch = self.batch
        for rid in so.finished_req_ids:
            self.requests.pop(rid, None)
            batch.remove_request(rid)
        cached = so.scheduled_cached_reqs
        # Requests not scheduled now (or preempted) leave the batch but keep their state.
        running = so.num_scheduled_tokens.keys() - cached.resumed_req_ids
        for rid in batch.req_id_to_index.keys() - running:
            batch.remove_request(rid)
        to_add: list[CachedRequestState] = []
        for new in so.scheduled_new_reqs:
            if new.req_id in self.requests:  # a re-added id: a new request (the runner drops the old one)
                batch.remove_request(new.req_id)
            self.requests[new.req_id] = state = _state(new)
            to_add.append(state)
        for i, rid in enumerate(cached.req_ids):
            state = self.requests[rid]
            state.num_computed_tokens = cached.num_computed_tokens[i]
            tokens = cached.all_token_ids.get(rid)
            if tokens is not None:  # resumed or back after a pause: the scheduler's tokens are authoritative
                state.output_token_ids[:] = tokens[state.num_prompt_tokens:]
            elif cached.num_output_tokens[i] < len(state.output_token_ids):
                del state.output_token_ids[cached.num_output_tokens[i]:]
            if rid not in batch.req_id_to_index:
                to_add.append(state)
        for state in to_add:
            batch.add_request(state)
        batch.condense()
        batch.refresh_metadata()

    # ---- one step's tokens, as GPUModelRunner.sample_tokens + _bookkeeping_sync ----------------
    def sample(self, logits: torch.Tensor, sampling: set[str], so: Any,
               grammar_output: Any = None) -> tuple[list[list[int]], LogprobsLists | None]:
        """logits (len(req_ids), vocab): row i for req_ids[i]; rows of requests not in `sampling` (a prompt
        chunk) are sampled and discarded, as vLLM does, without advancing their generators."""
        batch = self.batch
        if logits.shape != (batch.num_reqs, self.vocab_size):
            raise RuntimeError(f"logits {tuple(logits.shape)} do not match the batch ({batch.num_reqs} requests, "
                               f"vocab {self.vocab_size})")
        if grammar_output is not None:
            apply_grammar_bitmask(so, grammar_output, batch, logits)
        discard = [i for i, rid in enumerate(batch.req_ids) if rid not in sampling]
        # vLLM rewinds a discarded row's generator by its offset; CPU generators have no offset.
        saved = {i: batch.generators[i].get_state() for i in discard if i in batch.generators}
        out = self.sampler(logits, batch.sampling_metadata)
        for i, state in saved.items():
            batch.generators[i].set_state(state)
        tokens = out.sampled_token_ids.tolist()
        for i in discard:
            tokens[i] = []
        for i, ids in enumerate(tokens):
            if ids:
                start = int(batch.num_tokens_no_spec[i])
                batch.token_ids_cpu[i, start:start + len(ids)] = ids
                batch.is_token_ids[i, start:start + len(ids)] = True
                batch.num_tokens_no_spec[i] = start + len(ids)
                self.requests[batch.req_ids[i]].output_token_ids.extend(ids)
        logprobs = out.logprobs_tensors.tolists() if out.logprobs_tensors is not None else None
        return tokens, logprobs


def _state(new: Any) -> CachedRequestState:
    sp = new.sampling_params
    generator = None
    if sp is not None and sp.sampling_type == SamplingType.RANDOM_SEED:
        generator = torch.Generator(device=CPU)
        generator.manual_seed(sp.seed)
    return CachedRequestState(req_id=new.req_id, prompt_token_ids=new.prompt_token_ids, mm_features=[],
                              sampling_params=sp, generator=generator, block_ids=(),
                              num_computed_tokens=new.num_computed_tokens, output_token_ids=[])
