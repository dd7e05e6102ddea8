"""The inbound soak's report: what it checked, as text and as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..soak import FaultResult, Resources
from .faults import BY_NAME, CATALOGUE


@dataclass
class ServeSoakReport:
    """Everything the soak found; ``ok`` only if every fault was answered, every good
    session was unaffected, the server counted every upgrade and refusal once, every count
    balanced and nothing leaked."""

    seed: int
    results: list[FaultResult]
    before: Resources
    after: Resources
    good: dict[str, Any]
    server: dict[str, Any]
    accounting: dict[str, Any]
    active_at_end: int

    @property
    def answered(self) -> int:
        return sum(result.recovered for result in self.results)

    @property
    def new_threads(self) -> list[str]:
        return self.after.threads_since(self.before)

    @property
    def leaked(self) -> bool:
        return (
            self.after.descriptors > self.before.descriptors
            or bool(self.new_threads)
            or self.active_at_end > 0
        )

    @property
    def ok(self) -> bool:
        return (
            self.answered == len(self.results)
            and not self.good["affected"]
            and self.good["sessions"] > 0
            and self.server["identity"]
            and self.accounting["balanced"]
            and not self.leaked
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seed": self.seed,
            "answered": self.answered,
            "total": len(self.results),
            "failed": [asdict(r) for r in self.results if not r.recovered],
            "results": [asdict(r) for r in self.results],
            "catalogue": {f.name: f"{f.description} -> {f.answer}" for f in CATALOGUE},
            "good": self.good,
            "server": self.server,
            "accounting": self.accounting,
            "leaks": {
                "descriptors_before": self.before.descriptors,
                "descriptors_after": self.after.descriptors,
                "threads_before": len(self.before.threads),
                "threads_after": len(self.after.threads),
                "new_threads": self.new_threads,
                "rss_kb_before": self.before.rss_kb,
                "rss_kb_after": self.after.rss_kb,
                "sessions_at_end": self.active_at_end,
            },
        }

    def render(self) -> str:
        lines = [
            f"serve soak (seed {self.seed}): {self.answered}/{len(self.results)} faults "
            "answered the documented way"
        ]
        lines += [
            f"  FAILED {r.fault} ({BY_NAME[r.fault].description}) after {r.seconds:.2f} s: "
            f"{r.detail}"
            for r in self.results
            if not r.recovered
        ]
        good = self.good
        lines.append(
            f"  good sessions: {good['completed']}/{good['sessions']} completed, frames sent "
            f"{good['frames_sent']}, counted {good['frames_counted']}"
            + (f"; AFFECTED: {'; '.join(good['affected'][:5])}" if good["affected"] else "")
        )
        server = self.server
        lines.append(
            "  servers "
            + ("counted every upgrade and refusal" if server["identity"] else "MISMATCH")
            + f": upgrades seen {server['upgrades_seen']} = sessions {server['sessions']} "
            f"(completed {server['completed']}, probes {server['probes']}, failed "
            f"{server['failed']}); refusals seen {server['refusals_seen']} = counted "
            f"{server['refusals_counted']} {server['refused_by_reason']}"
        )
        a = self.accounting
        frames = a["frames"]
        lines.append(
            f"  accounting {'balanced' if a['balanced'] else 'NOT balanced'}: "
            f"{a['summaries']} summaries; received {frames['received']} = played "
            f"{frames['played']} + late {frames['late']} + duplicate {frames['duplicate']} + "
            f"overflow {frames['overflow']} + malformed {frames['malformed']} + unplayed "
            f"{frames['unplayed']} + discarded {frames['discarded']}; lost {frames['lost']}"
        )
        lines.append(
            f"  descriptors {self.before.descriptors} -> {self.after.descriptors}, threads "
            f"{len(self.before.threads)} -> {len(self.after.threads)}"
            + (f" (new: {', '.join(self.new_threads)})" if self.new_threads else "")
            + f", RSS {self.before.rss_kb} -> {self.after.rss_kb} kB, sessions held at the "
            f"end {self.active_at_end}"
        )
        lines.append(f"  verdict: {'ok' if self.ok else 'FAILED'}")
        return "\n".join(lines)
