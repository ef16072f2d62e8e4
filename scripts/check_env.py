"""Fail if an environment holds a CUDA build of torch or any nvidia-* package.

Run by every hatch environment after install and by CI. A looser torch pin, uv, or a package that
depends on PyPI's `vllm` silently pulls multi-GB CUDA wheels on these CPU machines; this catches it.
"""

from __future__ import annotations

import sys
from importlib import metadata


def main() -> int:
    expect_torch = "--no-torch" not in sys.argv
    names = {(d.metadata["Name"] or "").lower(): d.version for d in metadata.distributions()}
    problems = [f"{n}=={v}" for n, v in sorted(names.items()) if n.startswith("nvidia-") or n == "vllm"]
    torch_version = names.get("torch")
    if expect_torch and torch_version is None:
        problems.append("torch is not installed (expected torch==2.13.0)")
    if not expect_torch and torch_version is not None:
        problems.append(f"torch=={torch_version} is installed in an environment that must not depend on torch")
    if torch_version is not None and not torch_version.startswith("2.13.0"):
        problems.append(f"torch=={torch_version} (expected 2.13.0, the local CPU wheel)")
    if torch_version is not None and "cu" in torch_version.split("+")[-1]:
        problems.append(f"torch=={torch_version} is a CUDA build")
    if problems:
        print("check_env: forbidden packages in this environment:\n  " + "\n  ".join(problems), file=sys.stderr)
        print("Reinstall with `pip install torch==2.13.0` first and never resolve PyPI's `vllm`.", file=sys.stderr)
        return 1
    print(f"check_env: ok (torch {torch_version or 'absent'}, no nvidia-* packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
