"""The compile cache deletes only what it created, and every bad location is one CacheError line.

What the store may delete (store/local.py): staging directories named `<key>.<pid>.<token>` or
`<key>.evicted.<pid>.<token>` under tmp/, and entry directories `entries/<key[:2]>/<key>/` that hold
its manifest. Everything else under the root is a user's and is left alone (and reported).
"""

from __future__ import annotations

import errno
import io
import os
import sys
import time
from pathlib import Path

import pytest
from cache_helpers import Compiler, make_key, neuron_config
from click.testing import CliRunner, Result

from neuron_cache.cli import EXIT_ERROR, cli
from neuron_cache.store import CacheError, CompileCache
from neuron_cache.store.entry import MANIFEST

MARKER = ".neuron-compile-cache"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def user_dir(path: Path, text: str = "holiday") -> Path:
    """A directory the user made, with one file in it."""
    path.mkdir(parents=True)
    (path / "IMG_0001.txt").write_text(text)
    return path


def survives(path: Path, text: str = "holiday") -> bool:
    return (path / "IMG_0001.txt").read_text() == text


def one_line_error(result: Result) -> str:
    assert result.exit_code == EXIT_ERROR, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


# ---- cleanup deletes only what the cache created ---------------------------------------------------


def test_cleanup_removes_its_entries_and_staging_and_reports_what_it_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache = CompileCache(root)
    keys = [make_key(f"old-{i}") for i in range(2)]
    for key in keys:
        cache.get_or_compile(key, Compiler(b"g" * 500))
        cache.local.touch(key, time.time() - 86400)
    assert (root / MARKER).is_file()  # the store made this root, and says so
    stale = cache.local.staging(make_key("killed"))  # a process died while compiling
    trash = root / "tmp" / f"{make_key('evicted')}.evicted.123.0badf00d"
    trash.mkdir()

    outside = user_dir(tmp_path / "elsewhere")  # a symlink's target: never deleted through the link
    key = make_key("lookalike")
    foreign = [
        user_dir(root / "tmp" / "photos.2024"),  # the reported case: it was deleted, "removed 0 entries"
        user_dir(root / "tmp" / f"{keys[0]}.backup"),  # starts with a key, but is no staging name
        user_dir(root / "entries" / "photos"),  # not a 2-hex shard
        user_dir(root / "entries" / key[:2] / "notes"),  # not a key name
        user_dir(root / "entries" / "00" / key),  # a key name in the wrong shard
        user_dir(root / "entries" / key[:2] / make_key("no-manifest")),  # no entry.json: not provably an entry
        user_dir(root / "beside"),
    ]
    (root / "locks" / "notes.txt").write_text("mine")
    (root / "registry" / "readme.md").parent.mkdir(parents=True, exist_ok=True)
    (root / "registry" / "readme.md").write_text("mine")
    staging_link = root / "tmp" / f"{make_key('x')}.1.abcdef12"
    staging_link.symlink_to(outside, target_is_directory=True)
    linked = root / "entries" / make_key("linked")[:2] / make_key("linked")
    linked.parent.mkdir(parents=True, exist_ok=True)
    linked.symlink_to(outside, target_is_directory=True)

    result = run("--url", str(root), "cleanup", "--max-size", "0")

    assert result.exit_code == 0, result.output
    assert result.output.startswith("removed 2 entries")
    assert cache.entries() == [] and not stale.exists() and not trash.exists()
    assert all(survives(path) for path in foreign) and survives(outside)
    assert (root / "locks" / "notes.txt").read_text() == (root / "registry" / "readme.md").read_text() == "mine"
    assert linked.is_symlink() and staging_link.is_symlink()
    reported = [line for line in result.output.splitlines() if line.startswith("left alone: ")]
    for path in [*foreign, root / "locks" / "notes.txt", root / "registry" / "readme.md", linked, staging_link]:
        assert sum(line.startswith(f"left alone: {path} ") for line in reported) == 1, (path, result.output)
    assert all("not created by the compile cache" in line for line in reported)
    assert not (root / "locks" / "photos.lock").exists()  # no lock is taken on a name the cache never made


def test_cleanup_refuses_a_directory_that_is_not_a_compile_cache(tmp_path: Path) -> None:
    root = tmp_path / "home"
    photos = user_dir(root / "tmp" / "photos.2024")

    result = run("--url", str(root), "cleanup", "--max-size", "0")

    line = one_line_error(result)
    assert str(root) in line and MARKER in line and "--url" in line
    assert survives(photos)
    with pytest.raises(CacheError, match="not a compile cache"):
        CompileCache(root).cleanup(max_size_bytes=0)
    assert sorted(p.name for p in root.iterdir()) == ["tmp"]  # nothing was created there either


def test_a_store_written_before_the_marker_still_cleans_up(tmp_path: Path) -> None:
    root = tmp_path / "legacy"
    cache = CompileCache(root)
    cache.get_or_compile(make_key("a"), Compiler(b"a"))
    (root / MARKER).unlink()  # what earlier versions left: entries/ but no marker
    assert [e.key for e in cache.cleanup(max_size_bytes=0)] == [make_key("a")]
    assert not (root / MARKER).exists()  # a store it did not create is not claimed afterwards


def test_get_or_compile_sweeps_only_its_own_staging(tmp_path: Path) -> None:
    cache, key = CompileCache(tmp_path / "cache"), make_key("k")
    stale = cache.local.staging(key)
    backup = user_dir(cache.local.tmp_dir / f"{key}.backup")
    outside = user_dir(tmp_path / "elsewhere")
    link = cache.local.tmp_dir / f"{key}.99.abcdef12"
    link.symlink_to(outside, target_is_directory=True)

    cache.get_or_compile(key, Compiler(b"graph"))

    assert not stale.exists() and survives(backup) and survives(outside) and link.is_symlink()


@pytest.mark.parametrize("shape", ["symlink", "subdirectory"])
def test_a_foreign_directory_at_an_entry_path_is_refused_not_evicted(tmp_path: Path, shape: str) -> None:
    cache, key = CompileCache(tmp_path / "cache"), make_key("k")
    path = cache.local.entry_dir(key)
    path.parent.mkdir(parents=True)
    if shape == "symlink":  # a link to a directory that looks like a corrupt entry
        target = user_dir(tmp_path / "elsewhere")
        (target / MANIFEST).write_text("{not json")
        path.symlink_to(target, target_is_directory=True)
    else:  # the store never puts a directory inside an entry
        target = user_dir(path / "photos")

    with pytest.raises(CacheError, match="not created by the compile cache") as err:
        cache.get_or_compile(key, Compiler(b"graph"))

    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert survives(target)


# ---- where the cache lives: empty URL, a file in the way, a read-only store ---------------------------


@pytest.mark.parametrize("url", ["", "   ", "file://"])
def test_an_empty_url_is_an_error_not_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CacheError, match="empty") as err:
        CompileCache.from_env(url)
    assert "--url" in str(err.value) and "--cache-url" in str(err.value)
    line = one_line_error(run("--url", url, "status"))
    assert "--url" in line and "empty" in line
    assert one_line_error(run("--url", url, "cleanup", "--max-size", "0"))
    assert list(tmp_path.iterdir()) == []


def test_an_empty_environment_url_means_unset_and_a_blank_one_is_named(
    monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    monkeypatch.setenv("NEURON_COMPILE_CACHE_URL", "")
    assert CompileCache.from_env().root == isolated_env / "neuron" / "compile"
    monkeypatch.setenv("NEURON_COMPILE_CACHE_URL", "  ")
    with pytest.raises(CacheError, match="NEURON_COMPILE_CACHE_URL"):
        CompileCache.from_env()


@pytest.mark.parametrize("where", ["root", "parent"])
def test_a_file_where_the_cache_directory_should_be(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file")
    root = blocker if where == "root" else blocker / "cache"
    cache = CompileCache(root)

    for action in (
        lambda: cache.get_or_compile(make_key("a"), Compiler(b"a")),
        lambda: cache.register_export("org/m", neuron_config()),
        lambda: cache.cleanup(max_size_bytes=0),
    ):
        with pytest.raises(CacheError) as err:
            action()
        message = str(err.value)
        assert f"{blocker} is a regular file" in message and "NEURON_COMPILE_CACHE_DIR" in message
        assert "\n" not in message

    for command in (["cleanup", "--max-size", "0"], ["status"]):
        line = one_line_error(run("--url", str(root), *command))
        assert str(blocker) in line and "NEURON_COMPILE_CACHE_DIR" in line
    assert blocker.read_text() == "a regular file"


def _read_only(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Writes under `root` fail with EROFS, as on a read-only mount. Tests run as root, for whom
    chmod does not make a directory read-only, so the file-system calls the store uses are patched."""
    prefix = str(root) + os.sep

    def refuse(path: object) -> None:
        if str(os.fspath(path)).startswith(prefix):  # type: ignore[arg-type]
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    real_open, real_io_open, real_mkdir = os.open, io.open, os.mkdir
    real_rename, real_replace = os.rename, os.replace

    def os_open(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def io_open(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_io_open(file, mode, *args, **kwargs)

    def mkdir(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
        refuse(src)
        refuse(dst)
        return real_rename(src, dst, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
        refuse(dst)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(io, "open", io_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)


def test_a_read_only_store_gives_one_cache_error_naming_the_path_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    cache = CompileCache(root)
    cache.get_or_compile(make_key("warm"), Compiler(b"warm"))
    _read_only(monkeypatch, root)

    with pytest.raises(CacheError) as err:
        cache.get_or_compile(make_key("cold"), Compiler(b"cold"))
    message = str(err.value)
    assert str(root) in message and "Read-only file system" in message and "\n" not in message
    assert "NEURON_COMPILE_CACHE_DIR" in message and "permissions" in message
    with pytest.raises(CacheError, match="Read-only file system"):
        cache.register_export("org/m", neuron_config())

    line = one_line_error(run("--url", str(root), "cleanup", "--max-size", "0"))
    assert str(root) in line and "Read-only file system" in line


# ---- remotes whose client library is missing -----------------------------------------------------------


def test_s3_without_boto3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # `import boto3` now fails as if it were not installed
    with pytest.raises(CacheError, match=r"pip install 'neuron-cache\[s3\]'"):
        CompileCache.from_env("s3://bucket/prefix")
    line = one_line_error(run("--url", "s3://bucket/prefix", "status"))
    assert "s3://bucket/prefix" in line and "pip install 'neuron-cache[s3]'" in line


def test_hub_without_huggingface_hub_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(CacheError, match="pip install") as err:
        CompileCache.from_env("hf://org/cache")
    assert "huggingface_hub" in str(err.value) and "hf://org/cache" in str(err.value)
