"""`neuron-cache`: manage the compile cache (local store, Hub or S3 remote, export registry).

Imports no torch; huggingface_hub and boto3 are imported only by the commands that reach a remote.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import click

from neuron_cache.store import CacheEntry, CacheError, CompileCache, RemoteError
from neuron_cache.store.local import not_ours
from neuron_cache.store.remote import unreachable
from neuron_cache.store.settings import (
    config_path,
    hub_offline,
    read_default_remote,
    resolve_location,
    write_default_remote,
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND = 0, 1, 2, 3
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """'10G' -> 10 GiB in bytes; K, M, G, T are powers of 1024; an optional 'B' or 'iB' follows; bare = bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not match:
        raise ValueError(f"size {text!r}: use a number with an optional unit K, M, G or T (powers of 1024), e.g. 10G")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def parse_age(text: str) -> float:
    """'7d' -> seconds; units s, m, h, d, w may be combined ('1d12h'); a bare number is seconds."""
    clean = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", clean):
        return float(clean)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", clean)
    if not parts or "".join(n + u for n, u in parts) != clean:
        raise ValueError(f"age {text!r}: use a number with units s, m, h, d or w, e.g. 7d or 1d12h")
    return sum(float(n) * _AGE_UNITS[u] for n, u in parts)


def format_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def format_age(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds / span:.1f}{unit} ago"
    return f"{seconds:.0f}s ago"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in headers], *[[("-" if c is None else str(c)) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class _Parsed(click.ParamType):
    def __init__(self, name: str, parse: Any) -> None:
        self.name, self._parse = name, parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


class _Group(click.Group):
    """Turns cache errors into exit code 1 with the message (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (CacheError, ValueError, OSError) as err:
            raise click.ClickException(str(err)) from err


def _cache(ctx: click.Context) -> CompileCache:
    return CompileCache.from_env(ctx.obj["url"])


EPILOG = (
    f"Exit codes: {EXIT_OK} ok, {EXIT_ERROR} error, {EXIT_USAGE} usage error, {EXIT_NOT_FOUND} lookup found nothing. "
    "`set` keeps the default remote in $XDG_CACHE_HOME/neuron/cache_config.json (~/.cache/neuron/...); the "
    "local store is NEURON_COMPILE_CACHE_DIR or $XDG_CACHE_HOME/neuron/compile."
)


@click.group(cls=_Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", help="Cache URL: a path, s3://BUCKET/PREFIX or hf://ORG/REPO (default: "
              "NEURON_COMPILE_CACHE_URL, then the remote saved by `set`).")
@click.option("-v", "--verbose", is_flag=True, help="Log what the cache does.")
@click.pass_context
def cli(ctx: click.Context, url: str | None, verbose: bool) -> None:
    """Manage the Neuron compile cache: a local store, optionally backed by a Hub repo or an S3 prefix."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if url is not None:
        resolve_location(url)  # an empty --url is an error for every command, not the current directory
    ctx.obj = {"url": url}


@cli.command()
@click.argument("repo_id")
@click.option("--public", is_flag=True, help="Create a public repo (default: private).")
@click.option("--set-default/--no-set-default", default=True, help="Make it the default remote (default: yes).")
def create(repo_id: str, public: bool, set_default: bool) -> None:
    """Create the Hub cache repo REPO_ID (ORG/NAME) if it does not exist."""
    from neuron_cache.store.remote_hub import HubRemote

    remote = HubRemote(repo_id)
    if hub_offline():
        raise CacheError(f"HF_HUB_OFFLINE is set: cannot create {remote.url}; unset it first")
    click.echo(f"Hub cache repo: {remote.create_repo(private=not public)}")
    if set_default:
        click.echo(f"default remote: {remote.url} (saved in {write_default_remote(remote.url)})")


@cli.command(name="set")
@click.argument("url", required=False)
@click.option("--clear", is_flag=True, help="Forget the default remote.")
def set_default(url: str | None, clear: bool) -> None:
    """Save URL (hf://ORG/REPO or s3://BUCKET/PREFIX) as the default remote."""
    if clear == (url is not None):
        raise click.UsageError("give either a URL or --clear")
    path = write_default_remote(None if clear else url)
    click.echo(f"default remote: {url or 'none'} (saved in {path})")


@cli.command()
@click.pass_context
def synchronize(ctx: click.Context) -> None:
    """Upload local entries and registry files that the remote lacks (idempotent)."""
    report = _cache(ctx).synchronize()
    click.echo(
        f"{report.url}: uploaded {len(report.uploaded)} entries ({report.already_remote} already there) "
        f"and {report.registry_uploaded} registry files"
    )


@cli.command()
@click.argument("model_id")
@click.option("--task")
@click.option("--batch_size", "--batch-size", "batch_size", type=int)
@click.option("--sequence_length", "--sequence-length", "sequence_length", type=int)
@click.option("--tensor_parallel_size", "--tensor-parallel-size", "tensor_parallel_size", type=int)
@click.option("--torch_dtype", "--torch-dtype", "torch_dtype")
@click.option("--target", help="Device, backend or instance type of the target (e.g. trn2, cpu, torch-aot).")
@click.pass_context
def lookup(ctx: click.Context, model_id: str, **filters: Any) -> None:
    """List the configurations compiled for MODEL_ID (exit 3 if none; 1 if the remote cannot be reached)."""
    cache = _cache(ctx)
    failure: str | None = None
    try:
        cache.pull_registry(model_id)
    except RemoteError as err:  # show what the local registry has, then fail: the answer is incomplete
        failure = unreachable(getattr(cache.remote, "url", ""), err)
    found = cache.registry.lookup(model_id, **filters)
    if not found:
        if failure is not None:
            raise CacheError(f"{failure}; the local registry has no configuration of {model_id} either")
        wanted = ", ".join(f"{k}={v}" for k, v in filters.items() if v is not None)
        click.echo(f"no compiled configuration of {model_id}{f' with {wanted}' if wanted else ''}", err=True)
        ctx.exit(EXIT_NOT_FOUND)
    rows = [
        (c.get("task"), c.get("batch_size"), c.get("sequence_length"), c.get("tensor_parallel_size"),
         c.get("torch_dtype"), (c.get("target") or {}).get("device"), (c.get("target") or {}).get("compiler_version"),
         ",".join(map(str, c.get("context_buckets") or [])))
        for c in found
    ]
    click.echo(f"{len(found)} compiled configuration(s) of {model_id}:")
    click.echo(table(("task", "batch", "seq_len", "tp", "dtype", "target", "compiler", "buckets"), rows))
    if failure is not None:
        raise CacheError(f"{failure}; the list above is the local registry only")


@cli.command()
@click.option("--entries", "show_entries", is_flag=True, help="Also list every entry.")
@click.option("--remote", "count_remote", is_flag=True, help="Also count the remote's entries (network).")
@click.pass_context
def status(ctx: click.Context, show_entries: bool, count_remote: bool) -> None:
    """Show the local store, the remote and the registry."""
    location = resolve_location(ctx.obj["url"])
    cache = _cache(ctx)
    cache.local.check_usable()
    entries = cache.entries()
    models = cache.registry.models()
    rows = [
        ("local store", f"{cache.root} ({len(entries)} entries, {format_size(sum(e.size for e in entries))})"),
        ("remote", f"{cache.remote.url} (from {location.source})" if cache.remote else "none"),
        ("offline", "yes (HF_HUB_OFFLINE)" if hub_offline() else "no"),
        ("registry", f"{len(models)} models, {len(cache.registry.files())} configurations"),
        ("config file", f"{config_path()} (default remote: {read_default_remote() or 'none'})"),
    ]
    failure: str | None = None
    if count_remote and cache.remote is not None:
        try:
            rows.append(("remote entries", str(len(cache.remote.entry_keys()))))
        except RemoteError as err:  # never "0 entries" for a remote that was not asked
            failure = unreachable(cache.remote.url, err)
    width = max(len(name) for name, _ in rows)
    click.echo("\n".join(f"{name.ljust(width)}  {value}" for name, value in rows))
    if failure is not None:
        raise CacheError(failure)
    if show_entries and entries:
        click.echo()
        click.echo(_entries_table(sorted(entries, key=lambda e: -e.last_access)))


def _entries_table(entries: Sequence[CacheEntry]) -> str:
    now = time.time()
    rows = [(e.key[:16], e.file or f"(broken: {e.problem})", format_size(e.size), format_age(now - e.last_access)) for e in entries]
    return table(("key", "file", "size", "last used"), rows)


@cli.command()
@click.option("--older-than", type=_Parsed("age", parse_age), help="Remove entries unused for this long (7d, 12h, 1d12h).")
@click.option("--max-size", type=_Parsed("size", parse_size), help="Then remove least recently used entries down to this size (10G).")
@click.option("--dry-run", is_flag=True, help="Only show what would be removed.")
@click.pass_context
def cleanup(ctx: click.Context, older_than: float | None, max_size: int | None, dry_run: bool) -> None:
    """Remove unused entries from the local store, least recently used first.

    Deletes only what the cache created (its entries and staging); anything else under the cache
    directory is listed as left alone. Refuses a non-empty directory that is not a compile cache.
    """
    report = _cache(ctx).cleanup_report(max_size_bytes=max_size, older_than_seconds=older_than, dry_run=dry_run)
    removed = report.removed
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(removed)} entries ({format_size(sum(e.size for e in removed))})")
    if removed:
        click.echo(_entries_table(removed))
    if report.in_use:
        click.echo(f"in use, kept: {', '.join(e.key[:16] for e in report.in_use)}")
    for path in report.left_alone:
        click.echo(f"left alone: {not_ours(path)}")


def main(argv: Sequence[str] | None = None, standalone_mode: bool = True) -> Any:
    return cli.main(args=list(argv) if argv is not None else sys.argv[1:], prog_name="neuron-cache", standalone_mode=standalone_mode)


if __name__ == "__main__":
    main()
