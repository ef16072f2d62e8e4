"""Fixtures for tensor-parallel artifacts (tp_testlib.py): one checkpoint per architecture per session.

The AOTInductor path with collectives compiled in is the session's `tiny_tp2_artifact`
(tests/support/fixtures.py), shared with tests/vllm.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers
from support.tiny import save_tiny_checkpoint
from tp_testlib import CONFIGS


@pytest.fixture(scope="session")
def tp_checkpoints(tmp_path_factory) -> dict[str, tuple[Path, transformers.PreTrainedModel]]:
    root = tmp_path_factory.mktemp("tp-ckpt")
    return {name: (root / name, save_tiny_checkpoint(make(), root / name, seed=7)) for name, make in CONFIGS.items()}
