"""Processes as Linux reports them in /proc: for tests that check nothing outlives what they started."""

from __future__ import annotations

from pathlib import Path


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of a live process (a zombie counts as live), or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[3])


def live_pids() -> dict[int, tuple[int, int]]:
    """Every process's (parent pid, session id), by pid."""
    stats = {int(p.name): proc_stat(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    return {pid: st for pid, st in stats.items() if st is not None}


def children_of(pid: int) -> list[int]:
    return [child for child, (ppid, _) in live_pids().items() if ppid == pid]
