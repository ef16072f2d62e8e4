"""The static-shape Llama-family decoder that every architecture in this package instantiates.

Three kinds of graph are traced from one module (see `DecoderModel.role`):

- context encoding: one prompt of `bucket` tokens (batch 1, positions 0..bucket-1) written into
  the KV-cache row `seq_id`; returns the logits (or the sampled token) at `last_index`;
- token generation: one token for every slot of the batch at per-row `positions`, attending over the
  first `kv_length` cache positions (a graph per KV bucket: decode cost follows the live context, not
  the compiled `sequence_length`, as NxDI's token-generation buckets do);
- chunked prefill: a chunk of `bucket` tokens of one slot at positions start..start+bucket-1, attending
  over that slot's cache positions up to each token's own (earlier chunks, a copied prefix); returns the
  logits of every chunk position (NxDI's and optimum-neuron's chunked prefill).

The KV cache is module state (buffers) of shape (batch, kv_heads, sequence_length, head_dim)
per layer, updated in place; weights, rope tables and caches are all bound at load time, so the
compiled graph carries no weights.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from neuron_cache.arch.spec import DecoderArch
from neuron_export.models.moe import MoE
from neuron_export.models.parallel import all_reduce, gather_vocab, local_token_rows, rank_arch, vocab_shard_rows
from neuron_export.models.sampling import sample_on_device
from neuron_export.models.spec import StaticShapes

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, unit_offset: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.unit_offset = eps, unit_offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same order of operations as transformers: normalise in fp32, cast, then scale (Llama); Gemma scales by
        # (1 + weight) in fp32 and casts last.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (x * (1.0 + self.weight.float())).to(dtype)
        return self.weight * x.to(dtype)


def rms_norm(arch: DecoderArch, dim: int) -> RMSNorm:
    return RMSNorm(dim, arch.rms_norm_eps, arch.rms_norm_unit_offset)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] channels of x (B, heads, T, head_dim); cos/sin (B, 1, T, rot)."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x1, x2 = x_rot[..., : rot // 2], x_rot[..., rot // 2 :]
    rotated = torch.cat((-x2, x1), dim=-1)
    out = x_rot * cos + rotated * sin
    return torch.cat((out, x_pass), dim=-1) if x_pass.shape[-1] else out


class Attention(nn.Module):
    """`arch` is what one rank runs (`rank_arch`): its share of the heads; o_proj's outputs are summed over ranks."""

    def __init__(self, arch: DecoderArch, shapes: StaticShapes, layer: int, kv_cache: bool = True):
        super().__init__()
        self.arch, self.layer, self.tp = arch, layer, shapes.tensor_parallel_size
        hd, nh, nkv = arch.head_dim, arch.num_heads, arch.num_kv_heads
        self.qkv_proj = nn.Linear(arch.hidden_size, (nh + 2 * nkv) * hd, bias=arch.qkv_bias)
        self.o_proj = nn.Linear(nh * hd, arch.hidden_size, bias=arch.o_bias)
        if arch.qk_norm:
            self.q_norm = rms_norm(arch, hd)
            self.k_norm = rms_norm(arch, hd)
        if not kv_cache:  # `encode` only (decoder embeddings): no cache buffers in the graph
            return
        cache_shape = (shapes.batch_size, nkv, shapes.sequence_length, hd)
        dtype = getattr(torch, shapes.dtype)
        self.register_buffer("k_cache", torch.zeros(cache_shape, dtype=dtype))
        self.register_buffer("v_cache", torch.zeros(cache_shape, dtype=dtype))

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (B, T, hidden) -> q (B, nh, T, hd), k and v (B, nkv, T, hd), rope and norms applied."""
        a = self.arch
        B, T, _ = x.shape
        q, k, v = self.qkv_proj(x).split(
            [a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim, a.num_kv_heads * a.head_dim], dim=-1
        )
        q = q.view(B, T, a.num_heads, a.head_dim).transpose(1, 2)
        k = k.view(B, T, a.num_kv_heads, a.head_dim).transpose(1, 2)
        v = v.view(B, T, a.num_kv_heads, a.head_dim).transpose(1, 2)
        if a.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if a.uses_rope(self.layer):
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Grouped-query attention without repeating k/v: q (B, nh, T, hd), k/v (B, nkv, S, hd)."""
        a = self.arch
        B, _, T, hd = q.shape
        groups = a.num_heads // a.num_kv_heads
        q = q.reshape(B, a.num_kv_heads, groups * T, hd)
        scores = torch.matmul(q, k.transpose(-1, -2)) * a.scale  # (B, nkv, groups*T, S)
        if a.attn_logit_softcap is not None:
            scores = torch.tanh(scores / a.attn_logit_softcap) * a.attn_logit_softcap
        scores = scores.view(B, a.num_kv_heads, groups, T, -1).masked_fill(~mask[:, None, None], float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype).view(B, a.num_kv_heads, groups * T, -1)
        out = torch.matmul(probs, v).view(B, a.num_heads, T, hd)
        return all_reduce(self.o_proj(out.transpose(1, 2).reshape(B, T, a.num_heads * hd)), self.tp)

    def encode(self, x, cos, sin, bias):
        """Attention over the input alone, no cache (decoder embeddings): x (B, T, hidden); bias additive,
        broadcastable to (B, heads, T, T) (causal, key padding, the layer's window)."""
        q, k, v = self.project(x, cos, sin)
        B, T, _ = x.shape
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.arch.scale, enable_gqa=True)
        return all_reduce(self.o_proj(out.transpose(1, 2).reshape(B, T, self.arch.num_heads * self.arch.head_dim)),
                          self.tp)

    def context_encoding(self, x, cos, sin, seq_id, mask):
        q, k, v = self.project(x, cos, sin)
        B, T, _ = x.shape
        kv_heads = torch.arange(self.arch.num_kv_heads, device=x.device)
        pos = torch.arange(T, device=x.device)
        index = (seq_id.view(1, 1, 1), kv_heads.view(1, -1, 1), pos.view(1, 1, -1))
        self.k_cache.index_put_(index, k)
        self.v_cache.index_put_(index, v)
        if self.arch.attn_logit_softcap is not None:  # SDPA cannot cap the scores
            return self.attend(q, k, v, mask)
        # Fused attention (the backend's flash-attention kernel: AOTInductor on CPU calls
        # _scaled_dot_product_flash_attention_for_cpu), never materialising the (heads, T, T) scores. The
        # prompt is padded at the end, so plain causal masking is exact for the real tokens; a sliding-window
        # layer passes its mask.
        window = self.arch.sliding_window(self.layer)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if window is None else mask[:, None],
                                             is_causal=window is None, scale=self.arch.scale, enable_gqa=True)
        out = out.transpose(1, 2).reshape(B, T, self.arch.num_heads * self.arch.head_dim)
        return all_reduce(self.o_proj(out), self.tp)

    def chunked_prefill(self, x, cos, sin, seq_id, window, source, mask):
        """x (1, C, hidden): a chunk of slot seq_id. Cache positions window[j] (C distinct positions, all inside the
        cache) take the chunk's row source[j], or keep what they hold where source[j] is -1: a chunk that would run
        past the cache end writes only the positions inside it, however the runtime calls it. Then attends over
        the slot's whole cache row, masked causally at absolute positions (and by the layer's window)."""
        q, k, v = self.project(x, cos, sin)
        C = x.shape[1]
        kv_heads = torch.arange(self.arch.num_kv_heads, device=x.device)
        index = (seq_id.view(1, 1, 1), kv_heads.view(1, -1, 1), window.view(1, 1, -1))
        fresh = (source >= 0).view(1, 1, -1, 1)
        rows = source.clamp(0, C - 1)
        for cache, new in ((self.k_cache, k), (self.v_cache, v)):
            cache.index_put_(index, torch.where(fresh, new.index_select(2, rows), cache[index]))
        keys, values = self.k_cache.index_select(0, seq_id), self.v_cache.index_select(0, seq_id)  # (1, nkv, S, hd)
        if self.arch.attn_logit_softcap is not None:  # SDPA cannot cap the scores
            return self.attend(q, keys, values, mask)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None], scale=self.arch.scale,
                                             enable_gqa=True)
        out = out.transpose(1, 2).reshape(1, C, self.arch.num_heads * self.arch.head_dim)
        return all_reduce(self.o_proj(out), self.tp)

    def token_generation(self, x, cos, sin, positions, mask, seq_ids=None):
        """One token per row. Row i is slot i, or slot seq_ids[i] in a graph over a subset of the slots,
        which reads and writes only those slots' cache rows. Attends over the first mask.shape[-1] cache
        positions (the graph's KV bucket; every row's position lies below it)."""
        q, k, v = self.project(x, cos, sin)
        rows = torch.arange(x.shape[0], device=x.device) if seq_ids is None else seq_ids
        kv_heads = torch.arange(self.arch.num_kv_heads, device=x.device)
        index = (rows.view(-1, 1), kv_heads.view(1, -1), positions.view(-1, 1))
        self.k_cache.index_put_(index, k[:, :, 0])
        self.v_cache.index_put_(index, v[:, :, 0])
        S = mask.shape[-1]
        keys, values = self.k_cache[:, :, :S], self.v_cache[:, :, :S]
        if seq_ids is None:
            return self.attend(q, keys, values, mask)
        return self.attend(q, keys.index_select(0, seq_ids), values.index_select(0, seq_ids), mask)


class MLP(nn.Module):
    def __init__(self, arch: DecoderArch, tp: int = 1):
        super().__init__()
        self.tp = tp
        self.intermediate = arch.intermediate_size
        self.gate_up_proj = nn.Linear(arch.hidden_size, 2 * arch.intermediate_size, bias=arch.mlp_bias)
        self.down_proj = nn.Linear(arch.intermediate_size, arch.hidden_size, bias=arch.mlp_bias)
        self.act = ACTIVATIONS[arch.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate, dim=-1)
        return all_reduce(self.down_proj(self.act(gate) * up), self.tp)


class DecoderLayer(nn.Module):
    def __init__(self, arch: DecoderArch, shapes: StaticShapes, layer: int, kv_cache: bool = True):
        super().__init__()
        self.residual_multiplier = arch.residual_multiplier
        self.input_layernorm = rms_norm(arch, arch.hidden_size)
        # Gemma's sandwich: each block's output is normalised too before it joins the residual (Identity: no op).
        self.attn_output_norm = rms_norm(arch, arch.hidden_size) if arch.sandwich_norms else nn.Identity()
        self.mlp_output_norm = rms_norm(arch, arch.hidden_size) if arch.sandwich_norms else nn.Identity()
        self.attn = Attention(arch, shapes, layer, kv_cache)
        self.post_attention_layernorm = rms_norm(arch, arch.hidden_size)  # the norm before the MLP
        # routed experts (moe.py; parameters layers.{i}.moe.*, as the checkpoint plans name them) or the dense MLP
        self.moe = MoE(arch, shapes.tensor_parallel_size, shapes.expert_parallel_size) if arch.is_moe_layer(layer) else None
        self.mlp = None if self.moe else MLP(arch, shapes.tensor_parallel_size)

    def forward(self, x: torch.Tensor, attn_fn) -> torch.Tensor:
        x = x + self.attn_output_norm(attn_fn(self.attn, self.input_layernorm(x))) * self.residual_multiplier
        ffn = self.moe or self.mlp
        return x + self.mlp_output_norm(ffn(self.post_attention_layernorm(x))) * self.residual_multiplier


class DecoderModel(nn.Module):
    """The static-shape decoder. Set `role` before tracing to pick the graph `forward` traces."""

    ROLES = ("context_encoding", "token_generation", "chunked_prefill")

    def __init__(self, arch: DecoderArch, shapes: StaticShapes):
        super().__init__()
        self.arch, self.shapes = arch, shapes
        self._role = "token_generation"
        self.decode_rows: int | None = None  # set (with role token_generation) to trace a sub-batch graph
        # set (with role token_generation) to trace a graph attending over the first kv_length cache positions
        self.kv_length: int | None = None
        # A rank's share of the model (all of it at tensor_parallel_size 1); see parallel.py.
        self.tp = tp = shapes.tensor_parallel_size
        local = rank_arch(arch, tp, shapes.expert_parallel_size)
        # Vocabulary-parallel embedding and head: this rank's rows plus one zero row (see parallel.py).
        rows = arch.vocab_size if tp == 1 else vocab_shard_rows(arch.vocab_size, tp) + 1
        self.embed_tokens = nn.Embedding(rows, arch.hidden_size)
        if tp > 1:  # token id -> row of this shard (rank 0's values here; each rank's file has its own: rank_buffers)
            self.embed_tokens.register_buffer("local_ids", local_token_rows(arch.vocab_size, tp, 0))
        self.layers = nn.ModuleList(DecoderLayer(local, shapes, i) for i in range(arch.num_layers))
        self.norm = rms_norm(arch, arch.hidden_size)
        self.lm_head = nn.Linear(arch.hidden_size, rows, bias=False)
        if arch.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        rot = arch.rotary_dim or arch.head_dim
        dtype = getattr(torch, shapes.dtype)
        # One cos/sin table pair per arch.rope_kinds (most models: one, rope_cos and rope_sin); layer i uses
        # table rope_index[i].
        self.rope_index = [arch.rope_table(i) for i in range(arch.num_layers)]
        for j in range(len(arch.rope_kinds)):
            for name in rope_names(j):
                self.register_buffer(name, torch.zeros(shapes.sequence_length, rot, dtype=dtype))
        # transformers multiplies by sqrt(hidden_size) rounded to float32, then to the weights' dtype.
        self.embedding_normalizer = None if arch.embedding_normalizer is None else \
            torch.tensor(arch.embedding_normalizer, dtype=torch.float32, device="cpu").to(dtype).item()

    def rope_buffers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(cos, sin) tables (sequence_length, rotary_dim), in arch.rope_kinds order."""
        return [tuple(self.get_buffer(name) for name in rope_names(j)) for j in range(len(self.arch.rope_kinds))]

    def _rope(self, select) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every table's cos and sin at the graph's positions: `select` picks the rows of one table."""
        return [(select(cos), select(sin)) for cos, sin in self.rope_buffers()]

    @property
    def role(self) -> str:
        return self._role

    @role.setter
    def role(self, role: str) -> None:
        self._role = role

    # ---- graph entry points ------------------------------------------------------------------
    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.role == "context_encoding":
            return self.context_encoding(*inputs)
        if self.role == "chunked_prefill":
            return self.chunked_prefill(*inputs)
        if self.decode_rows is not None:
            return self.token_generation_rows(*inputs)
        return self.token_generation(*inputs)

    def context_encoding(self, input_ids, seq_id, last_index, sampling_params=None, rand=None):
        """input_ids (1, bucket), seq_id (1,), last_index (1,) -> logits (1, vocab) or token (1,)."""
        T = input_ids.shape[1]
        pos = torch.arange(T, device=input_ids.device)
        ropes = self._rope(lambda table: table[:T][None, None])
        masks = self._masks(pos.view(1, -1, 1), pos.view(1, 1, -1))

        def attn(module: Attention, h):
            return module.context_encoding(h, *ropes[self.rope_index[module.layer]], seq_id, masks[module.layer])

        hidden = self._run_layers(input_ids, attn)
        hidden = hidden.index_select(1, last_index)
        return self._head(hidden[:, 0], sampling_params, rand)

    def chunked_prefill(self, input_ids, seq_id, start):
        """input_ids (1, C), seq_id (1,), start (1,) -> logits (C, vocab) float32 of every chunk position.

        The chunk's tokens sit at absolute positions start..start+C-1 of slot seq_id: rope, the causal mask and
        sliding windows use those positions. The runtime keeps start + n <= sequence_length for the n real tokens;
        rows past the cache end (a padded last chunk) are not written and their logits are garbage, as are the
        logits of padding rows (whose K/V land beyond the prompt, where later writes overwrite them). Always
        logits, also in an artifact that samples on device: prompt logprobs need every row, and the host samples
        the first token after a chunked prefill. The lm_head over C rows costs C times a decode step's head
        (SmolLM2: 49152 x 576 MACs a row), which a decode-sized model pays once a chunk, not once a token.
        """
        C, S = input_ids.shape[1], self.shapes.sequence_length
        steps = torch.arange(C, device=input_ids.device)
        pos = (start + steps).clamp(0, S - 1)  # in the cache (rows past the end act as the last position)
        first = start.clamp(max=S - C).clamp(min=0)  # the C cache positions written: first..first+C-1
        source = first + steps - start  # the chunk row each of them takes
        source = torch.where((source >= 0) & (source < C), source, -1)
        ropes = self._rope(lambda table: table.index_select(0, pos)[None, None])
        masks = self._masks(pos.view(1, -1, 1), torch.arange(S, device=input_ids.device).view(1, 1, -1))

        def attn(module: Attention, h):
            return module.chunked_prefill(h, *ropes[self.rope_index[module.layer]], seq_id, first + steps, source,
                                          masks[module.layer])

        return self._logits(self._run_layers(input_ids, attn)[0])

    def token_generation(self, input_ids, positions, sampling_params=None, rand=None):
        """input_ids (batch, 1), positions (batch,) -> logits (batch, vocab) or tokens (batch,)."""
        return self._token_generation(input_ids, positions, None, sampling_params, rand)

    def token_generation_rows(self, input_ids, positions, seq_ids, sampling_params=None, rand=None):
        """Like token_generation over n < batch rows: row i decodes slot seq_ids[i]; other slots are untouched."""
        return self._token_generation(input_ids, positions, seq_ids, sampling_params, rand)

    def _token_generation(self, input_ids, positions, seq_ids, sampling_params, rand):
        ropes = self._rope(lambda table: table.index_select(0, positions)[:, None, None])
        key_pos = torch.arange(self.kv_length or self.shapes.sequence_length, device=input_ids.device)
        masks = self._masks(positions.view(-1, 1, 1), key_pos.view(1, 1, -1))

        def attn(module: Attention, h):
            return module.token_generation(h, *ropes[self.rope_index[module.layer]], positions, masks[module.layer],
                                           seq_ids)

        hidden = self._run_layers(input_ids, attn)
        return self._head(hidden[:, 0], sampling_params, rand)

    # ---- pieces ------------------------------------------------------------------------------
    def _masks(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> list[torch.Tensor]:
        """One boolean mask (B, T, S) per layer: causal, plus the layer's sliding window if any."""
        causal = k_pos <= q_pos
        cache: dict[int | None, torch.Tensor] = {None: causal}
        out = []
        for layer in range(self.arch.num_layers):
            window = self.arch.sliding_window(layer)
            if window not in cache:
                cache[window] = causal & (k_pos > q_pos - window)
            out.append(cache[window])
        return out

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp == 1:
            return self.embed_tokens(input_ids)
        return all_reduce(self.embed_tokens(self.embed_tokens.local_ids[input_ids]), self.tp)

    def _run_layers(self, input_ids: torch.Tensor, attn_fn) -> torch.Tensor:
        hidden = self._embed(input_ids) * self.arch.embedding_multiplier
        if self.embedding_normalizer is not None:
            hidden = hidden * self.embedding_normalizer
        for layer in self.layers:
            hidden = layer(hidden, attn_fn)
        return self.norm(hidden)

    def _head(self, hidden: torch.Tensor, sampling_params, rand) -> torch.Tensor:
        logits = self._logits(hidden)
        if self.shapes.on_device_sampling:
            return sample_on_device(logits, sampling_params, rand, self.shapes.max_topk)
        return logits

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (rows, hidden) -> float32 logits (rows, vocab) over the whole vocabulary."""
        logits = self.lm_head(hidden).float()
        if self.tp > 1:  # every rank's vocabulary rows (see parallel.py)
            logits = gather_vocab(logits, self.embed_tokens.local_ids, self.tp)
        if self.arch.logits_divisor != 1.0:
            logits = logits / self.arch.logits_divisor
        if self.arch.final_logit_softcap is not None:  # in float32 (transformers: in the weights' dtype)
            logits = torch.tanh(logits / self.arch.final_logit_softcap) * self.arch.final_logit_softcap
        return logits

    # ---- export-time helpers -----------------------------------------------------------------
    def example_inputs(self, role: str, bucket: int | None = None, rows: int | None = None) -> tuple[torch.Tensor, ...]:
        """`rows`: a token-generation graph over that many of the batch's slots (None: all of them)."""
        if role == "chunked_prefill":  # never samples: see chunked_prefill
            assert bucket is not None
            return torch.zeros(1, bucket, dtype=torch.long), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
        if role == "context_encoding":
            assert bucket is not None
            inputs = (torch.zeros(1, bucket, dtype=torch.long), torch.zeros(1, dtype=torch.long),
                      torch.full((1,), bucket - 1, dtype=torch.long))
            rows = 1
        elif rows is None:
            rows = self.shapes.batch_size
            inputs = (torch.zeros(rows, 1, dtype=torch.long), torch.zeros(rows, dtype=torch.long))
        else:
            inputs = (torch.zeros(rows, 1, dtype=torch.long), torch.zeros(rows, dtype=torch.long),
                      torch.arange(rows, dtype=torch.long))
        if self.shapes.on_device_sampling:
            from neuron_cache.signature import GREEDY_ROW

            params = torch.tensor([GREEDY_ROW]).repeat(rows, 1)
            inputs = (*inputs, params, torch.zeros(rows))
        return inputs

    def input_names(self, role: str, rows: int | None = None) -> list[str]:
        if role == "chunked_prefill":
            return ["input_ids", "seq_id", "start"]
        if role == "context_encoding":
            names = ["input_ids", "seq_id", "last_index"]
        else:
            names = ["input_ids", "positions"] + (["seq_ids"] if rows is not None else [])
        return names + (["sampling_params", "rand"] if self.shapes.on_device_sampling else [])

    def signature(self, role: str, bucket: int | None = None, rows: int | None = None) -> dict[str, list[dict]]:
        """Static inputs and outputs of a graph, known without tracing it."""
        inputs = [{"name": n, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                  for n, t in zip(self.input_names(role, rows), self.example_inputs(role, bucket, rows))]
        if role == "chunked_prefill":
            return {"inputs": inputs, "outputs": [{"name": "logits", "shape": [bucket, self.arch.vocab_size],
                                                   "dtype": "float32"}]}
        rows = 1 if role == "context_encoding" else (rows or self.shapes.batch_size)
        if self.shapes.on_device_sampling:
            outputs = [{"name": "tokens", "shape": [rows], "dtype": "int64"}]
        else:
            outputs = [{"name": "logits", "shape": [rows, self.arch.vocab_size], "dtype": "float32"}]
        return {"inputs": inputs, "outputs": outputs}

    def rank_buffers(self, rank: int) -> dict[str, torch.Tensor]:
        """The constants only this module knows per rank (not cut from the checkpoint): the token map."""
        if self.tp == 1:
            return {}
        experts = {f"layers.{i}.moe.{k}": v for i, layer in enumerate(self.layers) if layer.moe
                   for k, v in layer.moe.rank_buffers(rank).items()}  # expert parallelism: the rank's first expert
        return {"embed_tokens.local_ids": local_token_rows(self.arch.vocab_size, self.tp, rank), **experts}

    def state_names(self) -> list[str]:
        return [n for n, _ in self.named_buffers() if n.endswith(("k_cache", "v_cache"))]

    def reset_state(self) -> None:
        # Buffer values at export time become the compiled graph's initial state: keep them zero.
        for name, buf in self.named_buffers():
            if name.endswith(("k_cache", "v_cache")):
                buf.zero_()


def rope_names(table: int) -> tuple[str, str]:
    """Buffer names of rope table `table`: the first keeps the one-table names every model had."""
    suffix = f"_{table}" if table else ""
    return f"rope_cos{suffix}", f"rope_sin{suffix}"


def rope_tables(hf_config: Any, arch: DecoderArch, sequence_length: int, dtype: torch.dtype,
                kind: str | None = None):
    """cos/sin tables (sequence_length, rotary_dim), computed exactly as transformers does; `kind`: one of
    arch.rope_kinds, the rope_parameters entry of a model with a table per layer type (None: rope_parameters)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = getattr(hf_config, "rope_parameters", None) or {}
    if kind is not None:
        params = params[kind]
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        rot = arch.rotary_dim or arch.head_dim
        base = params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
        inv_freq = 1.0 / (base ** (torch.arange(0, rot, 2, dtype=torch.int64).float() / rot))
        scaling = 1.0
    else:
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, "cpu", layer_type=kind)
    pos = torch.arange(sequence_length, dtype=torch.float32)
    freqs = pos[:, None] * inv_freq[None, :].float()
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)

