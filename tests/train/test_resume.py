"""A run restarted from its step-5 checkpoint in a new process group reproduces steps 6-10 exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_testlib import torchrun


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume")
    torchrun("resume.py", out, "--phase", "full", timeout=180)
    torchrun("resume.py", out, "--phase", "resume", timeout=180)
    return out


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp2", "dp2"])
def test_resume_reproduces_uninterrupted_run(runs: Path, layout: str) -> None:
    tmp_path = runs / layout
    full = json.loads((tmp_path / "full.json").read_text())
    resumed = json.loads((tmp_path / "resume.json").read_text())

    # The log file shows which steps each process computed: 1-10, then only 6-10 after the restart.
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [*range(1, 11), *range(6, 11)], f"the restarted run did not start at step 6: {steps}"
    assert len(full["loss"]) == len(resumed["loss"]) == 10
    # Bit-exact: same data order, optimizer moments, scheduler position and RNG state.
    assert resumed["loss"] == full["loss"]
    assert resumed["lr"] == full["lr"]
    assert resumed["grad_norm"] == full["grad_norm"]
