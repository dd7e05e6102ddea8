"""The fleet report of ``jitterline analyze``: one JSON document over many calls, and the
same in words (Markdown, with plots when matplotlib is installed).

The JSON is an interface (docs/cli.md, "Fleet report"): keys are only added, and
``report_version`` goes up if one must change meaning. It is computed from the per-call
summaries alone, in input order, so the same captures give the same report (all but
``run``, which says how and how fast they were replayed) whatever scheduled them.

A distribution is taken over calls, not frames: "p95 of ``rates.late``" is the late-loss
rate that 95 % of the calls stayed at or below, which is what a fleet owner asks ("how
many calls were bad?"), where pooling every frame would let a few long calls speak for
all. Percentiles interpolate linearly (numpy's default) and round like the summary
(``summary.DECIMALS``); a call whose value was never measured (``null``) is left out of
that distribution, and ``calls`` says how many were counted.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .redact import redact
from .summary import DECIMALS

__all__ = [
    "DISTRIBUTIONS",
    "PERCENTILES",
    "REPORT_VERSION",
    "WORST_CALLS",
    "fleet_report",
    "render_json",
    "render_markdown",
    "write_report",
]

REPORT_VERSION = 1
WORST_CALLS = 10
"""How many calls ``worst`` lists: a screenful, the ones to listen to first."""

PERCENTILES = (50, 90, 95, 99)

Summary = Mapping[str, Any]

DISTRIBUTIONS: dict[str, Callable[[Summary], float | None]] = {
    "late_rate": lambda s: s["rates"]["late"],
    "loss_rate": lambda s: s["rates"]["loss"],
    "delay_p50_ms": lambda s: s["delay_ms"]["p50"],
    "delay_p95_ms": lambda s: s["delay_ms"]["p95"],
    "jitter_ms": lambda s: s["jitter_ms"]["rfc3550"],
    "buffer_target_ms": lambda s: s["buffer_ms"]["target"],
}
"""Each distribution's name in the report and the summary value it is taken over."""

REPORT_MD = "report.md"
REPORT_JSON = "analyze.json"
REPORT_PNG = "fleet.png"

log = logging.getLogger(__name__)


def fleet_report(rows: Sequence[Mapping[str, Any]], *, run: Mapping[str, Any]) -> dict[str, Any]:
    """The report over per-call rows (``{"capture", "ok", "error", "summary"}``, in input
    order); ``run`` describes the invocation (scheduler, workers, wall time)."""
    summaries = [row["summary"] for row in rows if row["ok"]]
    verdicts = Counter(s["diagnosis"]["verdict"] for s in summaries)
    return {
        "report_version": REPORT_VERSION,
        "run": dict(run),
        "captures": len(rows),
        "replayed": len(summaries),
        "failed": len(rows) - len(summaries),
        "verdicts": dict(sorted(verdicts.items(), key=lambda item: (-item[1], item[0]))),
        "distributions": {
            name: _distribution([value(s) for s in summaries])
            for name, value in DISTRIBUTIONS.items()
        },
        "worst": [_worst_entry(row) for row in _worst(rows)],
        "failures": [
            {"capture": row["capture"], "error": row["error"]} for row in rows if not row["ok"]
        ],
        "calls": [dict(row) for row in rows],
    }


def _distribution(values: Sequence[float | None]) -> dict[str, float | int | None]:
    import numpy as np

    measured = np.array([v for v in values if v is not None], dtype=float)
    result: dict[str, float | int | None] = {"calls": int(measured.size)}
    empty = measured.size == 0
    result["mean"] = None if empty else round(float(measured.mean()), DECIMALS)
    for q in PERCENTILES:
        result[f"p{q}"] = None if empty else round(float(np.percentile(measured, q)), DECIMALS)
    result["max"] = None if empty else round(float(measured.max()), DECIMALS)
    return result


def _worst(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Calls whose verdict is not ``healthy`` first, then by the share of audio that did
    not play on time (late + lost), then by delay p95: a healthy call never outranks a
    diagnosed one, however close to a threshold it came."""

    def badness(row: Mapping[str, Any]) -> tuple[bool, float, float]:
        summary = row["summary"]
        rates = summary["rates"]
        missing = (rates["late"] or 0.0) + (rates["loss"] or 0.0)
        delay = summary["delay_ms"]["p95"]
        unhealthy = summary["diagnosis"]["verdict"] != "healthy"
        return unhealthy, missing, -1.0 if delay is None else delay

    ok = [row for row in rows if row["ok"]]
    ranked = sorted(ok, key=lambda row: row["capture"])
    ranked.sort(key=badness, reverse=True)  # stable: equal calls stay in path order
    return ranked[:WORST_CALLS]


def _worst_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    summary = row["summary"]
    return {
        "capture": row["capture"],
        "verdict": summary["diagnosis"]["verdict"],
        "late_rate": summary["rates"]["late"],
        "loss_rate": summary["rates"]["loss"],
        "delay_p95_ms": summary["delay_ms"]["p95"],
        "summary": summary["diagnosis"]["summary"],
    }


def render_json(report: Mapping[str, Any]) -> str:
    """Indented, keys in report order, credentials masked like every summary the
    command prints."""
    return redact(json.dumps(report, indent=2, allow_nan=False))


# -- the human report -----------------------------------------------------------------------


def write_report(directory: Path, report: Mapping[str, Any]) -> list[Path]:
    """``report.md``, ``analyze.json`` and, with matplotlib, ``fleet.png`` in
    ``directory`` (created if missing); the files written, the Markdown first."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        written = [directory / REPORT_MD, directory / REPORT_JSON]
        plotted = _plot(directory / REPORT_PNG, report)
        written[1].write_text(render_json(report) + "\n", encoding="utf-8")
        image = REPORT_PNG if plotted else None
        written[0].write_text(redact(render_markdown(report, image=image)), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot write the report to --report {str(directory)!r} ({exc.strerror}); "
            "pick a writable directory"
        ) from exc
    return [*written, directory / REPORT_PNG] if plotted else written


def render_markdown(report: Mapping[str, Any], *, image: str | None = None) -> str:
    run = report["run"]
    lines = [
        "# jitterline fleet report",
        "",
        f"{report['captures']} captures, {report['replayed']} replayed, "
        f"{report['failed']} failed; {_where(run)}, {run.get('wall_s', 0.0):.1f} s.",
        "",
        "## Verdicts",
        "",
        "| verdict | calls |",
        "|---|---:|",
        *(f"| {verdict} | {count} |" for verdict, count in report["verdicts"].items()),
        "",
        "## Distributions over calls",
        "",
        "| measure | calls | mean | " + " | ".join(f"p{q}" for q in PERCENTILES) + " | max |",
        "|---|---:|---:|" + "---:|" * len(PERCENTILES) + "---:|",
    ]
    for name, dist in report["distributions"].items():
        cells = [dist["mean"], *(dist[f"p{q}"] for q in PERCENTILES), dist["max"]]
        lines.append(f"| {name} | {dist['calls']} | " + " | ".join(map(_cell, cells)) + " |")
    if image is not None:
        lines += ["", f"![late loss, delay and verdicts over calls]({image})"]
    lines += [
        "",
        f"## Worst calls (up to {WORST_CALLS})",
        "",
        "| capture | verdict | late | lost | delay p95 ms | diagnosis |",
        "|---|---|---:|---:|---:|---|",
    ]
    for worst in report["worst"]:
        lines.append(
            f"| `{worst['capture']}` | {worst['verdict']} | {_cell(worst['late_rate'])} | "
            f"{_cell(worst['loss_rate'])} | {_cell(worst['delay_p95_ms'])} | "
            f"{_escape(worst['summary'])} |"
        )
    if report["failures"]:
        lines += ["", "## Failed captures", "", "| capture | error |", "|---|---|"]
        lines += [f"| `{f['capture']}` | {_escape(f['error'])} |" for f in report["failures"]]
    return "\n".join(lines) + "\n"


def _where(run: Mapping[str, Any]) -> str:
    scheduler = run.get("scheduler")
    if scheduler == "local":
        return f"a local Dask cluster of {run.get('workers')} workers"
    if scheduler == "serial":
        return "one process"
    return f"the Dask cluster at {scheduler}"


def _cell(value: object) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _plot(path: Path, report: Mapping[str, Any]) -> bool:
    """Histograms of late loss and delay p95 over calls and the verdict counts; one line
    and no plot without matplotlib (the Markdown and JSON are the report)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning(
            "--report: no plots: matplotlib is not installed; pip install 'jitterline[report]'"
        )
        return False
    summaries = [row["summary"] for row in report["calls"] if row["ok"]]
    figure = Figure(figsize=(13, 4), layout="constrained")
    FigureCanvasAgg(figure)
    late, delay, verdicts = figure.subplots(1, 3)
    for axes, name, label in (
        (late, "late_rate", "late-loss rate per call"),
        (delay, "delay_p95_ms", "delay p95 per call (ms)"),
    ):
        values = [v for v in map(DISTRIBUTIONS[name], summaries) if v is not None]
        axes.hist(values, bins=30)
        axes.set_xlabel(label)
        axes.set_ylabel("calls")
    verdicts.barh(list(report["verdicts"]), list(report["verdicts"].values()))
    verdicts.set_xlabel("calls")
    verdicts.invert_yaxis()
    figure.savefig(path, dpi=100)
    return True
