"""`neuron-train` command line. Imports torch only inside commands, so `--help` stays instant."""

from __future__ import annotations

import click


@click.group()
def main() -> None:
    """Tensor-parallel fine-tuning utilities (training itself is launched with torchrun)."""


@main.command()
@click.argument("checkpoint_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.option("--merge-lora", is_flag=True, help="Fold LoRA adapters into the weights instead of writing OUTPUT_DIR/adapter/.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None, help="Cast the weights (default: keep fp32).")
def consolidate(checkpoint_dir: str, output_dir: str, merge_lora: bool, dtype: str | None) -> None:
    """Merge a sharded CHECKPOINT_DIR (or the latest checkpoint in it) into one HF checkpoint in OUTPUT_DIR."""
    from neuron_train.consolidate import consolidate as run

    try:
        out = run(checkpoint_dir, output_dir, merge_lora=merge_lora, dtype=dtype)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"wrote {out}")
