"""Check an artifact against transformers' eager model on a probe prompt, as any consumer runs it.

The artifact is opened with `load_runtime` and driven only through the runtime's public methods
(`prefill`, `decode`, `decode_slots`, `prefill_chunk`, `config`): what passes here is what generate, the
Engine and vLLM will run. The reference model is the caller's (neuron-export passes the checkpoint it
has in memory; `neuron-infer validate` loads it from disk).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from neuron_cache import Artifact
from neuron_cache.config import VALIDATION_ATOL
from neuron_cache.signature import GREEDY_ROW
from neuron_infer.runtime import load_runtime

DECODE_STEPS = 4


class ValidationError(Exception):
    """The artifact's graphs do not compute what transformers computes (the message says by how much)."""


def validate_artifact(root: Path, reference_model: torch.nn.Module, atol: float | None = None,
                      log: Callable[[str], None] = print) -> float:
    """Max abs logit difference over a prefill and a few decode steps; raises ValidationError above `atol`
    (None: the artifact dtype's default, `neuron_cache.config.VALIDATION_ATOL`). `reference_model` must be
    in the artifact's dtype; it may be cast to float32 on the 16-bit fallback path."""
    runtime = load_runtime(Artifact.open(Path(root)))
    config = runtime.config
    atol = VALIDATION_ATOL[config.torch_dtype] if atol is None else atol
    n = min(12, config.max_context_length - 1, config.sequence_length - DECODE_STEPS - 1)
    ids = (torch.arange(n) * 7919 + 13) % int(reference_model.config.vocab_size)
    # Decode steps cycle through the sub-batch graphs and the full batch (None), so every compiled graph meets
    # transformers at least once when DECODE_STEPS allows.
    decoders: list[int | None] = [*config.decode_rows, None]
    sampling = config.on_device_sampling
    greedy = lambda rows: (torch.tensor([GREEDY_ROW] * rows), torch.zeros(rows)) if sampling else (None, None)  # noqa: E731
    # The last slot, not 0: a graph that ignored its seq_id/seq_ids input would land in slot 0.
    slot = config.batch_size - 1

    prefixes, ours_logits, ref_logits = [], [], []
    with torch.no_grad():
        ours = runtime.prefill(ids, slot, *greedy(1))
        seq = ids.view(1, -1)
        for step in range(DECODE_STEPS + 1):
            ref = reference_model(seq).logits[0, -1].float()
            if sampling:
                if not torch.isfinite(ref).all():  # its argmax means nothing
                    raise _not_finite(config.torch_dtype)
                if int(ours) != int(ref.argmax()):
                    raise ValidationError(
                        f"on-device greedy token {int(ours)} != transformers' argmax {int(ref.argmax())} at step {step}"
                    )
                nxt = int(ours)
            else:
                prefixes.append(seq)
                ours_logits.append(ours.float())
                ref_logits.append(ref)
                nxt = int(ref.argmax())
            if step == DECODE_STEPS:
                break
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
            ours = _decode_step(runtime, decoders[step % len(decoders)], slot, nxt, seq.shape[1] - 1, greedy)
        if config.chunk_buckets:
            # The chunked-prefill graphs too: the probe prompt in two pieces, the second at an offset into the
            # rows the first wrote (slot 0, another row than the decode steps used when there is one).
            half = n // 2
            runtime.prefill_chunk(ids[:half], 0, 0)
            chunk = runtime.prefill_chunk(ids[half:], 0, half)[-1].float()
            ref = reference_model(ids.view(1, -1)).logits[0, -1].float()
            if sampling and int(chunk.argmax()) != int(ref.argmax()):
                raise ValidationError(f"chunked prefill's greedy token {int(chunk.argmax())} != transformers' argmax "
                                      f"{int(ref.argmax())}")
            prefixes.append(ids.view(1, -1))
            ours_logits.append(chunk)
            ref_logits.append(ref)
    if sampling:
        log(f"Validation against transformers ({config.torch_dtype}, prefill + {DECODE_STEPS} decode steps"
            f"{' + chunked prefill' if config.chunk_buckets else ''}): greedy tokens identical")
        return 0.0
    return _check_logits(reference_model, prefixes, ours_logits, ref_logits, config.torch_dtype, atol, log)


def _decode_step(runtime, rows: int | None, slot: int, token: int, position: int, greedy) -> torch.Tensor:
    """`token` at `position` of `slot` through the sub-batch graph of `rows` rows (None: the full batch);
    returns that slot's output (logits (vocab,), or the token sampled on device)."""
    if rows is not None:
        # A sub-batch graph names the slot in every row (the same token at the same position: identical KV
        # writes). `rows` is a compiled sub-batch size, so `rows` slots make the runtime pick exactly that graph.
        full = torch.full((rows,), token, dtype=torch.long), torch.full((rows,), position, dtype=torch.long)
        return runtime.decode_slots([slot] * rows, *full, *greedy(rows))[0]
    # The full graph decodes the slot in its own row; the other rows run token 0 at position 0.
    batch = runtime.config.batch_size
    tokens, positions = torch.zeros(batch, dtype=torch.long), torch.zeros(batch, dtype=torch.long)
    tokens[slot], positions[slot] = token, position
    return runtime.decode(tokens, positions, *greedy(batch))[slot]


def _check_logits(ref_model: torch.nn.Module, prefixes: list[torch.Tensor], ours: list[torch.Tensor],
                  ref: list[torch.Tensor], dtype: str, atol: float, log: Callable[[str], None]) -> float:
    # A NaN anywhere makes the difference NaN (torch's max propagates it), and NaN > atol is False: every
    # test below is written so that a NaN fails it.
    worst = torch.stack([(o - r).abs().max() for o, r in zip(ours, ref)]).max().item()
    log(f"Validation against transformers ({dtype}, prefill + {DECODE_STEPS} decode steps"
        f"{' + chunked prefill' if len(ours) > DECODE_STEPS + 1 else ''}): max |logit diff| = {worst:.3g} (atol {atol:g})")
    if not worst <= atol and dtype != "float32":
        # Two 16-bit computations of the same model differ by their own rounding, which grows with depth;
        # a gap between ours and transformers' 16-bit model does not say which one is off. Ask float32
        # (transformers on the same 16-bit-rounded weights): pass when ours is at least as close to it as
        # transformers' own 16-bit model is. Only on this path: it costs a float32 copy of the model.
        ours_err, hf_err = _errors_against_float32(ref_model, prefixes, ours, ref)
        log(f"  against transformers in float32 on the same weights: ours {ours_err:.3g}, "
            f"transformers {dtype} {hf_err:.3g}")
        if math.isfinite(ours_err) and ours_err <= hf_err:
            return worst
    if not math.isfinite(worst):
        if not all(torch.isfinite(r).all() for r in ref):
            raise _not_finite(dtype)
        raise ValidationError(
            f"the compiled graphs' logits are NaN or inf where transformers' are finite (max |logit diff| = {worst}); "
            "report a bug with the model id"
        )
    if not worst <= atol:  # (a NaN atol fails too)
        raise ValidationError(
            f"compiled graphs differ from transformers by {worst:.3g} > atol {atol:g}. Re-export with a larger --atol "
            "if this dtype needs it, or report a bug with the model id."
        )
    return worst


def _not_finite(dtype: str) -> ValidationError:
    return ValidationError(
        f"transformers' own logits ({dtype}) are NaN or inf on the validation prompt: the checkpoint holds NaN/inf "
        "weights. Re-download or re-save the checkpoint"
    )


def _errors_against_float32(ref_model: torch.nn.Module, prefixes: list[torch.Tensor], ours: list[torch.Tensor],
                            ref: list[torch.Tensor]) -> tuple[float, float]:
    """(max |ours - float32|, max |transformers 16-bit - float32|) over the validated steps."""
    ref_model.to(torch.float32)  # (.float() is refused for GGUF-loaded models; .to is not)
    ours_err, hf_err = [], []
    with torch.no_grad():
        for seq, o, r in zip(prefixes, ours, ref):
            exact = ref_model(seq).logits[0, -1].float()
            ours_err.append((o - exact).abs().max())
            hf_err.append((r - exact).abs().max())
    return torch.stack(ours_err).max().item(), torch.stack(hf_err).max().item()  # NaN-propagating, unlike max()
