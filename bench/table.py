"""The one results table: row groups, samples (medians), failures, ratios to the best peer and to the roofline."""

from __future__ import annotations

from dataclasses import dataclass, field

from common import median

# group key -> (title, unit, higher is better). Order here is the order in the table.
GROUPS: dict[str, tuple[str, str, bool]] = {}


def group(key: str, title: str, unit: str, higher_better: bool) -> str:
    GROUPS.setdefault(key, (title, unit, higher_better))
    return key


@dataclass
class Row:
    system: str
    ours: bool = False
    samples: list[float] = field(default_factory=list)
    failed: str | None = None
    note: str = ""
    bytes_per_token: int | None = None  # weights read per decode step: gives the row's % of roofline


class Table:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Row]] = {}
        self.bandwidth_gbs: float | None = None

    def row(self, key: str, system: str, ours: bool = False) -> Row:
        return self.rows.setdefault(key, {}).setdefault(system, Row(system, ours))

    def add(self, key: str, system: str, value: float, *, ours: bool = False, note: str = "",
            bytes_per_token: int | None = None) -> None:
        r = self.row(key, system, ours)
        r.samples.append(value)
        r.note = note or r.note
        r.bytes_per_token = bytes_per_token or r.bytes_per_token

    def fail(self, key: str, system: str, reason: str, *, ours: bool = False) -> None:
        r = self.row(key, system, ours)
        r.failed = r.failed or reason.replace("|", "/").replace("\n", " ")[:240]

    def render(self, header: list[str], order: list[str] | None = None) -> str:
        """`order`: group keys first in this order, then any other group in registration order."""
        lines = [*header, "",
                 "| figure | system | value | vs best peer | of roofline | n | notes |",
                 "|---|---|---:|---:|---:|---:|---|"]
        for key in dict.fromkeys([*(order or []), *GROUPS]):
            rows = self.rows.get(key)
            if not rows:
                continue
            title, unit, higher = GROUPS[key]
            lines.append(f"| **{title}** | | **{unit}** | {'higher' if higher else 'lower'} is better | | | |")
            lines += self._group_lines(rows, higher)
            lines += self._roofline_lines(rows)
        return "\n".join(lines)

    def _group_lines(self, rows: dict[str, Row], higher: bool) -> list[str]:
        peers = [median(r.samples) for r in rows.values() if r.samples and not r.failed and not r.ours]
        best = (max(peers) if higher else min(peers)) if peers else None
        out = []
        for r in rows.values():
            name = f"**{r.system}**" if r.ours else r.system
            if r.failed or not r.samples:
                reason = r.failed or "no samples"
                out.append(f"| | {name} | {reason if reason.startswith('skipped') else 'failed: ' + reason} | | | | |")
                continue
            v = median(r.samples)
            # Always a speed ratio: > 1 means better than the best peer, for times as for rates.
            ratio = "" if best is None else f"{(v / best if higher else best / v):.2f}x"
            roof = ""
            if r.bytes_per_token and self.bandwidth_gbs:
                roof = f"{v / (self.bandwidth_gbs * 1e9 / r.bytes_per_token):.0%}"
            spread = f" ({min(r.samples):.3g}-{max(r.samples):.3g})" if len(r.samples) > 1 else ""
            out.append(f"| | {name} | {fmt(v)} | {ratio} | {roof} | {len(r.samples)} | {r.note}{spread} |")
        return out

    def _roofline_lines(self, rows: dict[str, Row]) -> list[str]:
        """One roofline row per distinct weight size in the group: bandwidth / weight bytes per token."""
        if not self.bandwidth_gbs:
            return []
        sizes: dict[int, list[str]] = {}
        for r in rows.values():
            if r.bytes_per_token:
                mb = round(r.bytes_per_token / 1e6)
                sizes.setdefault(mb, []).append(r.system)
        out = []
        for mb, systems in sorted(sizes.items(), reverse=True):
            out.append(f"| | roofline, {mb} MB/token ({len(systems)} row(s)) | {fmt(self.bandwidth_gbs * 1e3 / mb)} "
                       f"| | 100% | | {self.bandwidth_gbs:.1f} GB/s measured / weight bytes per token |")
        return out


def fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
