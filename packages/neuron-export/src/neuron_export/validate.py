"""Check a freshly compiled artifact against transformers' eager model on a probe prompt."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from neuron_cache import NeuronConfig
from neuron_export.backends import Backend
from neuron_export.errors import ValidationFailedError

DECODE_STEPS = 4


def load_constants(root: Path, config: NeuronConfig) -> dict[str, torch.Tensor]:
    """Weights, aliases (tied tensors) and zeroed state, keyed by the graphs' constant names."""
    from safetensors.torch import load_file

    constants: dict[str, torch.Tensor] = {}
    for f in config.weights.files:
        constants.update(load_file(root / f.path))
    for alias, name in config.weights.aliases.items():
        constants[alias] = constants[name]
    for spec in config.state:
        constants[spec.name] = torch.zeros(spec.shape, dtype=getattr(torch, spec.dtype))
    for name, spec in config.weights.derived.items():  # pre-packed weights (backends/cpu_kernels.py)
        from neuron_export.backends.cpu_kernels import PACK_OP, pack

        if spec.op != PACK_OP:
            raise ValueError(f"weights.derived.{name}: op {spec.op!r} is not what this neuron-export writes ({PACK_OP})")
        constants[name] = pack(constants[spec.source], int(spec.args["batch_size"]))
    return constants


def _reference_model(hf_config: Any, hf_state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    model.load_state_dict(hf_state, strict=False)
    if getattr(hf_config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.eval()


def validate_artifact(
    root: Path, hf_config: Any, hf_state: Mapping[str, torch.Tensor], hf_model: torch.nn.Module | None,
    backend: Backend, atol: float, log: Callable[[str], None],
) -> float:
    """Max abs logit difference over a prefill and a few decode steps; raises above `atol`."""
    config = NeuronConfig.load(root)
    dtype = getattr(torch, config.torch_dtype)
    constants = load_constants(root, config)
    n = min(12, config.max_context_length - 1, config.sequence_length - DECODE_STEPS - 1)
    bucket = config.bucket_for(n)
    prefill = backend.load(root / config.graphs[f"context_encoding_{bucket}"].file, constants)
    # Decode steps cycle through the sub-batch graphs (rows, seq_ids input) and the full-batch one, so
    # every compiled graph meets transformers at least once when DECODE_STEPS allows.
    decoders = [(g.rows, backend.load(root / g.file, constants)) for g in config.graphs.values()
                if g.role == "token_generation"]
    decoders.sort(key=lambda d: d[0] or config.batch_size)
    ref_model = (hf_model.to(dtype) if hf_model is not None else _reference_model(hf_config, hf_state, dtype))
    ids = (torch.arange(n) * 7919 + 13) % config_vocab(hf_config)
    sampling = config.on_device_sampling
    greedy = lambda rows: (torch.tensor([[1.0, 1.0, 1.0]]).repeat(rows, 1), torch.zeros(rows))  # noqa: E731

    padded = torch.zeros(1, bucket, dtype=torch.long)
    padded[0, :n] = ids
    extra = greedy(1) if sampling else ()
    prefixes, ours_logits, ref_logits = [], [], []
    with torch.no_grad():
        # The last slot, not 0: a graph that ignored its seq_id/seq_ids input would land in slot 0.
        slot = config.batch_size - 1
        ours = prefill(padded, torch.tensor([slot]), torch.tensor([n - 1]), *extra)[0]
        seq = ids.view(1, -1)
        for step in range(DECODE_STEPS + 1):
            ref = ref_model(seq).logits[0, -1].float()
            if sampling:
                if not torch.isfinite(ref).all():  # its argmax means nothing
                    raise _not_finite(config.torch_dtype)
                if int(ours[0]) != int(ref.argmax()):
                    raise ValidationFailedError(
                        f"on-device greedy token {int(ours[0])} != transformers' argmax {int(ref.argmax())} at step {step}"
                    )
                nxt = int(ours[0])
            else:
                prefixes.append(seq)
                ours_logits.append(ours[0].float())
                ref_logits.append(ref)
                nxt = int(ref.argmax())
            if step == DECODE_STEPS:
                break
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
            rows, decode = decoders[step % len(decoders)]
            tokens = torch.zeros(rows or config.batch_size, 1, dtype=torch.long)
            positions = torch.zeros(rows or config.batch_size, dtype=torch.long)
            # The full graph decodes the slot in its own row; a sub-batch graph names the slot in every row
            # (the same token at the same position: identical KV writes).
            row = slot if rows is None else slice(None)
            tokens[row, 0] = nxt
            positions[row] = seq.shape[1] - 1
            seq_ids = () if rows is None else (torch.full((rows,), slot, dtype=torch.long),)
            extra = greedy(rows or config.batch_size) if sampling else ()
            ours = decode(tokens, positions, *seq_ids, *extra)[0]
            ours = ours[slot:slot + 1] if rows is None else ours[:1]
    if sampling:
        log(f"Validation against transformers ({config.torch_dtype}, prefill + {DECODE_STEPS} decode steps): "
            "greedy tokens identical")
        return 0.0
    # A NaN anywhere makes the difference NaN (torch's max propagates it), and NaN > atol is False: every
    # test below is written so that a NaN fails it.
    worst = torch.stack([(o - r).abs().max() for o, r in zip(ours_logits, ref_logits)]).max().item()
    log(f"Validation against transformers ({config.torch_dtype}, prefill + {DECODE_STEPS} decode steps): "
        f"max |logit diff| = {worst:.3g} (atol {atol:g})")
    if not worst <= atol and dtype != torch.float32:
        # Two 16-bit computations of the same model differ by their own rounding, which grows with depth;
        # a gap between ours and transformers' 16-bit model does not say which one is off. Ask float32
        # (transformers on the same 16-bit-rounded weights): pass when ours is at least as close to it as
        # transformers' own 16-bit model is. Only on this path: it costs a float32 copy of the model.
        ours_err, hf_err = _errors_against_float32(ref_model, prefixes, ours_logits, ref_logits)
        log(f"  against transformers in float32 on the same weights: ours {ours_err:.3g}, "
            f"transformers {config.torch_dtype} {hf_err:.3g}")
        if math.isfinite(ours_err) and ours_err <= hf_err:
            return worst
    if not math.isfinite(worst):
        if not all(torch.isfinite(r).all() for r in ref_logits):
            raise _not_finite(config.torch_dtype)
        raise ValidationFailedError(
            f"the compiled graphs' logits are NaN or inf where transformers' are finite (max |logit diff| = {worst}); "
            "report a bug with the model id"
        )
    if not worst <= atol:  # (a NaN atol fails too)
        raise ValidationFailedError(
            f"compiled graphs differ from transformers by {worst:.3g} > atol {atol:g}. Re-export with a larger --atol "
            "if this dtype needs it, or report a bug with the model id."
        )
    return worst


def _not_finite(dtype: str) -> ValidationFailedError:
    return ValidationFailedError(
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


def config_vocab(hf_config: Any) -> int:
    return int(hf_config.vocab_size)
