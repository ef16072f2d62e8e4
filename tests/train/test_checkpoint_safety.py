"""Resuming reads checkpoint files without running code: tensors and plain containers only.

A crafted `optim-tp00.pt` or `rng-rank0000.pt` must be refused with one clear line, and its payload
must not run; a checkpoint written by save_checkpoint must still restore exactly (the slow,
multi-process version of that is test_resume.py).
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest
import torch
from tiny import tiny_hf_model

from neuron_train.models import model_class
from neuron_train.parallel.dims import ParallelDims
from neuron_train.training.args import NeuronTrainingArguments
from neuron_train.training.checkpoint import load_checkpoint, save_checkpoint
from neuron_train.training.optim import build_optimizer, build_scheduler


class RunsCode:
    """Unpickling this calls os.mkdir(marker): the stand-in for any code a crafted checkpoint runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return os.mkdir, (str(self.marker),)


def _parts(tmp_path: Path, seed: int = 3):
    dims = ParallelDims.build(tp=1)
    hf = tiny_hf_model("llama", seed=seed)
    model = model_class(hf.config)(hf.config, dims)
    model.load_hf_state_dict(hf.state_dict())
    args = NeuronTrainingArguments(output_dir=str(tmp_path / "run"), learning_rate=1e-2, warmup_steps=2,
                                   lr_scheduler_type="cosine", weight_decay=0.1, disable_tqdm=True)
    optimizer = build_optimizer(model, args, dims)
    return dims, model, optimizer, build_scheduler(optimizer, args, total_steps=10)


def _step(model, optimizer, scheduler) -> None:  # type: ignore[no-untyped-def]
    ids = torch.randint(0, 256, (2, 8))
    model(ids, ids).loss_sum.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    dims, model, optimizer, scheduler = _parts(tmp_path)
    _step(model, optimizer, scheduler)
    path = tmp_path / "checkpoint-1"
    save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, dims=dims, trainer_state={"step": 1})
    return path


@pytest.mark.parametrize("name", ["optim-tp00.pt", "rng-rank0000.pt"])
def test_a_checkpoint_file_that_runs_code_is_refused(tmp_path: Path, checkpoint: Path, name: str) -> None:
    marker = tmp_path / "code-ran"
    code = RunsCode(marker)  # under the keys that either file is read for (pickled once, run once)
    torch.save({"optimizer": code, "scheduler": {}, "python": code, "torch": code, "cuda": None}, checkpoint / name)
    # Control: this file does run code when fully unpickled, so its refusal below is what keeps the marker away.
    torch.load(checkpoint / name, weights_only=False)
    assert marker.is_dir()
    marker.rmdir()

    dims, model, optimizer, scheduler = _parts(tmp_path, seed=4)
    with pytest.raises(ValueError) as err:
        load_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, dims=dims)

    message = str(err.value)
    assert not marker.exists()
    assert str(checkpoint / name) in message and "posix.mkdir" in message and "\n" not in message
    assert "refus" in message and "save_checkpoint" in message


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the crafted file
def test_a_plain_pickle_is_refused_too(tmp_path: Path, checkpoint: Path) -> None:
    """Not a torch.save zip at all: torch's weights_only reader must still be the one that reads it."""
    marker = tmp_path / "code-ran"
    (checkpoint / "optim-tp00.pt").write_bytes(pickle.dumps(RunsCode(marker)))
    dims, model, optimizer, scheduler = _parts(tmp_path, seed=4)
    with pytest.raises(ValueError, match=r"optim-tp00\.pt"):
        load_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, dims=dims)
    assert not marker.exists()


def test_save_then_load_continues_exactly(tmp_path: Path) -> None:
    """Weights, Adam moments, scheduler position and both RNGs must all come back for the next step
    of the restored run to equal the original's bit for bit."""
    dims, model, optimizer, scheduler = _parts(tmp_path)
    _step(model, optimizer, scheduler)
    random.seed(7)
    torch.manual_seed(7)
    path = tmp_path / "checkpoint-1"
    save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, dims=dims, trainer_state={"step": 1})
    _step(model, optimizer, scheduler)  # the original run's next step draws its batch from the saved torch RNG
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected_draw = random.random()

    random.seed(99)
    torch.manual_seed(99)
    dims, restored, optimizer2, scheduler2 = _parts(tmp_path, seed=5)  # other weights until loaded
    state = load_checkpoint(path, model=restored, optimizer=optimizer2, scheduler=scheduler2, dims=dims)
    _step(restored, optimizer2, scheduler2)

    assert state == {"step": 1}
    assert all(torch.equal(p, expected[n]) for n, p in restored.named_parameters())
    assert scheduler2.get_last_lr() == scheduler.get_last_lr() and random.random() == expected_draw


def test_a_checkpoint_of_another_format_version_is_refused_by_resume_and_consolidate(tmp_path: Path, checkpoint: Path) -> None:
    """Format 1 named parameters `model.layers.*.self_attn.*`: neither resuming nor consolidating may misread it."""
    import json

    from neuron_train.consolidate import consolidate

    meta_file = checkpoint / "neuron_train.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "format_version": 1}))
    dims, model, optimizer, scheduler = _parts(tmp_path)
    with pytest.raises(ValueError, match="format_version=1"):
        load_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, dims=dims)
    with pytest.raises(ValueError, match="format_version=1; this neuron-train reads format 2"):
        consolidate(checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists()
