"""Fixtures of the compile-cache tests (helpers live in cache_helpers.py, a uniquely named module)."""

from __future__ import annotations

from pathlib import Path

import pytest

_ENV_VARS = (
    "NEURON_COMPILE_CACHE_URL", "NEURON_COMPILE_CACHE_DIR", "HF_ENDPOINT",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE",
)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No test reads the real ~/.cache or an engineer's cache settings."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in _ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "xdg"

