"""The `neuron-infer` command: `neuron-infer validate ARTIFACT --model CHECKPOINT [--atol X]`.

torch and transformers are imported inside the command, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuron-infer", description="Run and check compiled neuron artifacts.")
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser(
        "validate", help="compare an artifact's prefill and decode steps with transformers' model of its checkpoint",
        description="Run the artifact's compiled graphs through neuron-infer's runtime on a probe prompt and compare "
                    "their logits (or on-device greedy tokens) with transformers' eager model. Exit 0 when they agree, "
                    "1 when they do not.")
    validate.add_argument("artifact", type=Path, help="the artifact directory (holds neuron_config.json)")
    validate.add_argument("--model", required=True,
                          help="the checkpoint it was exported from: a local Hugging Face directory or a .gguf file")
    validate.add_argument("--atol", type=float, default=None,
                          help="max |logit difference| allowed (default: per dtype, 1e-3 for float32)")
    return parser


def load_reference(checkpoint: str, dtype: str):
    """transformers' model of `checkpoint` (a local directory or a .gguf file) in `dtype`."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(checkpoint).expanduser()
    # eager: transformers' reference attention, the only one applying every feature (its sdpa ignores Gemma 2's
    # attention soft-capping)
    if path.suffix == ".gguf" and path.is_file():  # dequantized to float32
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, attn_implementation="eager")
    elif path.is_dir():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), attn_implementation="eager")
    else:
        raise ValueError(f"--model {checkpoint!r} is neither a checkpoint directory nor a .gguf file; give the local "
                         "checkpoint the artifact was exported from")
    return model.to(getattr(torch, dtype)).eval()  # (.to, not .float(): GGUF-loaded models refuse the latter)


def _validate(args: argparse.Namespace) -> int:
    from neuron_cache import Artifact
    from neuron_infer.validate import ValidationError, validate_artifact

    try:
        config = Artifact.open(args.artifact).config
        if config.is_encoder:  # every (rows, bucket) graph against transformers' model for the artifact's task
            from neuron_infer.validate_encoder import validate_encoder_artifact

            max_diff = validate_encoder_artifact(args.artifact, Path(args.model).expanduser(), args.atol, print)
        else:
            reference = load_reference(args.model, config.torch_dtype)
            max_diff = validate_artifact(args.artifact, reference, args.atol, print)
    except (ValidationError, ValueError, OSError, RuntimeError) as err:
        print(f"Error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    print(f"OK: {args.artifact} matches {args.model} (max |logit diff| = {max_diff:.3g})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "validate":
        return _validate(args)
    raise AssertionError(args.command)  # argparse refuses unknown commands before this


if __name__ == "__main__":
    sys.exit(main())
