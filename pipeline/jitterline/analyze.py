"""``jitterline analyze``: replay many captures, one task each, and report on the fleet.

Each capture goes through ``live.replay``, the very function behind ``jitterline replay``,
and becomes the summary that command prints (``run.command`` says ``analyze``), so a call
analysed in a batch of thousands reads exactly as it would alone. What schedules the
replays is Dask distributed, because users who analyse recordings in bulk already run it
(a laptop's cores, or a cluster by address); replays are CPU-bound, pure Python and hold
the GIL, so a worker is a process with one thread. ``--workers 0`` replays in this
process without Dask, through the same task function and report: for a machine without
the ``fleet`` extra, and a reference to check a cluster's results against.

A capture that cannot be replayed (unreadable, corrupt, truncated, or one that trips a
bug) is one failed row with the error in words; the job goes on. Exit codes (docs/cli.md):
0 every capture replayed, 1 at least one failed, 2 usage (no capture found, an unwritable
output, Dask missing, the scheduler unreachable), 130/143 interrupted.

Workers open the captures themselves, by absolute path: on a cluster of several machines
the captures must live on storage every worker mounts at the same path, and every worker
needs jitterline (and its plugins) installed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from .errors import ConfigError, JitterlineError

__all__ = [
    "CAPTURE_SUFFIX",
    "LOCAL_HTTP",
    "DaskRunner",
    "Progress",
    "SerialRunner",
    "add_parser",
    "default_workers",
    "expand_captures",
    "replay_call",
    "scheduler_address",
]

CAPTURE_SUFFIX = ".jsonl"
"""What ``--record`` files end with: the files a directory argument contributes."""

FAILURES_SHOWN = 10
"""Failed captures named on stderr; the JSON report lists them all."""

LOCAL_HTTP = "127.0.0.1:0"
"""Where the local scheduler's HTTP endpoint (metrics, dashboard) listens: a free loopback
port. ``dashboard_address=None`` would still bind Dask's default 8787, which another
cluster on the machine may hold already."""

SCHEDULER_TIMEOUT_S = 10.0
"""How long to wait for ``--scheduler`` to answer before calling it unreachable."""

EXIT_OK = 0
EXIT_FAILED = 1

Row = dict[str, Any]
Task = Callable[[str, str], Row]

log = logging.getLogger(__name__)


# -- the task -------------------------------------------------------------------------------


def replay_call(
    capture: str, path: str, *, disabled: Sequence[str] = (), enabled: Sequence[str] = ()
) -> Row:
    """Replay one capture: ``{"capture", "ok", "error", "summary"}``. ``capture`` is the
    name the user gave (rows and reports show it), ``path`` the file to open.

    A fresh plugin host per call, as each ``jitterline replay`` has its own process: plugin
    failure counts (``plugins.failures``) belong to one call, and the installed codecs,
    dialects and buffer policies are the ones a single replay would use. No plugin is
    configured, so sinks (WAV, report, metrics) stay off.
    """
    from .live import replay
    from .plugins import PluginHost
    from .summary import summarize

    try:
        host = PluginHost(load_entrypoints=True, disabled=disabled, enabled=enabled)
        header, result = replay(Path(path), host=host)
    except JitterlineError as exc:
        return _failed(capture, str(exc))
    except Exception as exc:  # a capture no check foresaw: one row, not the job
        log.debug("replay of %s failed", capture, exc_info=True)
        return _failed(capture, f"internal error ({type(exc).__name__}): {exc}")
    run = {"command": "analyze", "capture": capture, "recorded": header.source}
    summary = summarize(
        result.stats, result.diagnosis, run=run, plugin_failures=result.plugin_failures
    )
    return {"capture": capture, "ok": True, "error": None, "summary": summary}


def _failed(capture: str, error: str) -> Row:
    return {"capture": capture, "ok": False, "error": error, "summary": None}


# -- inputs ---------------------------------------------------------------------------------


def expand_captures(items: Sequence[str]) -> list[str]:
    """Files as given; a directory gives its ``*.jsonl`` files (recursively, sorted); a
    pattern the shell left unexpanded (quoted, or on Windows) is globbed. Duplicates are
    dropped, the first mention keeping its place. A named file that does not exist stays:
    it becomes a failed row, like any unreadable capture."""
    found: dict[str, None] = {}
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            matches = sorted(str(p) for p in path.rglob(f"*{CAPTURE_SUFFIX}") if p.is_file())
        elif glob.has_magic(item) and not path.exists():
            matches = sorted(glob.glob(str(path), recursive=True))
        else:
            matches = [str(path)]
        if not matches:
            raise ConfigError(
                f"{item!r} holds no capture (*{CAPTURE_SUFFIX}); give files written by "
                "--record, a directory of them, or a pattern that matches some"
            )
        found.update(dict.fromkeys(matches))
    return list(found)


def scheduler_address(text: str) -> str:
    """Dask's address for ``--scheduler``: ``dask://HOST:PORT`` (and a bare ``HOST:PORT``)
    is ``tcp://HOST:PORT``; ``tcp://`` and ``tls://`` pass as given."""
    from urllib.parse import urlsplit

    given = text.strip()
    scheme, sep, rest = given.partition("://")
    if not sep:
        scheme, rest = "tcp", given
    scheme = {"dask": "tcp"}.get(scheme.lower(), scheme.lower())
    try:
        parts = urlsplit(f"{scheme}://{rest}")
        port = parts.port
    except ValueError:
        port = None
    if scheme not in ("tcp", "tls") or not parts.hostname or port is None or parts.path:
        raise ConfigError(
            f"--scheduler {text!r} is not a Dask scheduler address; give one like "
            "dask://HOST:8786 (or tcp://HOST:8786, tls://HOST:8786)"
        )
    return f"{scheme}://{rest}"


def default_workers() -> int:
    """One worker per core this process may run on (replays are CPU-bound)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


# -- runners: what schedules the task ---------------------------------------------------------


class SerialRunner:
    """Every replay in this process, one after the other: no Dask needed."""

    where = "serial"
    workers = 1

    def __enter__(self) -> SerialRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, task: Task, captures: Sequence[str], paths: Sequence[str]) -> Iterator[Row]:
        for capture, path in zip(captures, paths, strict=True):
            yield task(capture, path)


class DaskRunner:
    """One Dask task per capture, on a ``LocalCluster`` of ``workers`` processes started
    here (``address`` None) or on the cluster whose scheduler is at ``address``; rows come
    back as tasks finish. A task whose worker died is a failed row like any other."""

    def __init__(
        self, *, workers: int = 0, address: str | None = None, shown: str | None = None
    ) -> None:
        self._dask = _distributed()
        self.address = address
        self.shown = shown or address
        self.workers = workers
        self.where = "local" if address is None else address
        self._stack = contextlib.ExitStack()
        self._client: Any = None

    def __enter__(self) -> DaskRunner:
        dask = self._dask
        with self._stack as stack:
            chatty = logging.getLogger("distributed")  # its info lines would reach ours
            stack.callback(chatty.setLevel, chatty.level)
            chatty.setLevel(logging.ERROR)
            if self.address is None:
                cluster = stack.enter_context(
                    dask.LocalCluster(
                        n_workers=self.workers,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=LOCAL_HTTP,
                        silence_logs=logging.ERROR,
                    )
                )
                self._client = stack.enter_context(dask.Client(cluster, set_as_default=False))
            else:
                self._client = stack.enter_context(self._connect(dask.Client))
                self.workers = len(self._client.nthreads())
                if self.workers == 0:  # the tasks would wait for ever
                    raise ConfigError(
                        f"the Dask cluster at --scheduler {self.shown!r} has no workers; "
                        f"start some (dask worker {self.address}) and run again"
                    )
            self._stack = stack.pop_all()
        return self

    def _connect(self, client_type: Any) -> Any:
        try:
            return client_type(self.address, timeout=SCHEDULER_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"cannot reach the Dask scheduler at --scheduler {self.shown!r} ({exc}); "
                "check that it runs and that HOST:PORT is right"
            ) from None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stack.__exit__(exc_type, exc, traceback)

    def run(self, task: Task, captures: Sequence[str], paths: Sequence[str]) -> Iterator[Row]:
        futures = self._client.map(task, captures, paths, pure=False)
        named = {future.key: capture for future, capture in zip(futures, captures, strict=True)}
        for future in self._dask.as_completed(futures, loop=self._client.loop):
            try:
                row: Row = future.result()
            except Exception as exc:
                row = _failed(
                    named[future.key],
                    f"the Dask worker replaying it failed ({type(exc).__name__}: {exc})",
                )
            future.release()
            yield row


Runner = SerialRunner | DaskRunner


def _distributed() -> Any:
    """``dask.distributed``, or the one line that says which extra brings it."""
    try:
        import dask.distributed
    except ImportError:
        raise ConfigError(
            "jitterline analyze runs on Dask, which is not installed: pip install "
            "'jitterline[fleet]' (or pass --workers 0 to replay in this process)"
        ) from None
    return dask.distributed


def _runner(args: argparse.Namespace) -> Runner:
    if args.scheduler is not None:
        return DaskRunner(address=scheduler_address(args.scheduler), shown=args.scheduler)
    workers = default_workers() if args.workers is None else args.workers
    return SerialRunner() if workers == 0 else DaskRunner(workers=workers)


# -- progress -------------------------------------------------------------------------------


class Progress:
    """A counter redrawn in place on a terminal (``live``), at most every ``every_s``;
    elsewhere (a pipe, CI, ``--quiet``) nothing until the final line, as with the other
    commands' status."""

    def __init__(
        self,
        stream: TextIO,
        total: int,
        *,
        live: bool,
        every_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.total = total
        self.live = live
        self.every_s = every_s
        self.clock = clock
        self.done = 0
        self.failed = 0
        self._started_s = clock()
        self._drawn_s: float | None = None

    def add(self, row: Row) -> None:
        self.done += 1
        self.failed += not row["ok"]
        now = self.clock()
        due = self._drawn_s is None or now - self._drawn_s >= self.every_s
        if self.live and (due or self.done == self.total):
            self._drawn_s = now
            self.stream.write(f"\r{self._line(now)}")
            self.stream.flush()

    def _line(self, now: float) -> str:
        return (
            f"analyze: {self.done}/{self.total} replayed, {self.failed} failed, "
            f"{now - self._started_s:.0f} s"
        )

    def close(self) -> None:
        """Clears the live line, so the final lines start at column 0."""
        if self.live and self._drawn_s is not None:
            self.stream.write("\r\033[K")
            self.stream.flush()


# -- the command ----------------------------------------------------------------------------

EXAMPLES = """examples:
  jitterline analyze captures/                          # every *.jsonl, a local cluster
  jitterline analyze 'calls/2026-*/*.jsonl' --workers 4 --report fleet/
  jitterline analyze captures/ --scheduler dask://scheduler.internal:8786 --json fleet.json
  jitterline analyze call.jsonl other.jsonl --workers 0   # no Dask: in this process
exit codes: 0 every capture replayed, 1 some failed (one row each), 2 usage
"""


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``analyze`` on the CLI's subcommands (``argparse`` sub-parsers action)."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "analyze",
        help="replay many captures on Dask and report on the fleet",
        description="Replay captures written by --record, one Dask task each (a local\n"
        "cluster, or an existing one by address), and report per call (the summary\n"
        "replay prints) and over the fleet: verdict counts, worst calls, late-loss and\n"
        "delay distributions. Needs the fleet extra (pip install 'jitterline[fleet]')\n"
        "unless --workers 0.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "captures",
        nargs="+",
        metavar="CAPTURE",
        help=f"capture files, directories (their *{CAPTURE_SUFFIX}) or quoted patterns",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler",
        metavar="dask://HOST:PORT",
        help="run on the existing Dask cluster whose scheduler is there",
    )
    where.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="local cluster of N worker processes (default: one per core); "
        "0: no Dask, replay in this process",
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="write the JSON report to FILE (- = stdout; default stdout unless --report)",
    )
    parser.add_argument(
        "--report",
        metavar="DIR",
        help="write report.md, analyze.json and (with matplotlib) fleet.png to DIR",
    )
    parser.set_defaults(handler=command, output_options=(("--json", "json"),))
    return parser


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is below 0; 0 replays in this process")
    return value


def command(args: argparse.Namespace, host: Any) -> int:
    """The ``analyze`` handler: ``host`` (the CLI's ``PluginHost``) only says which
    plugins are blocked; each replay builds its own."""
    from .analyze_report import fleet_report

    captures = expand_captures(args.captures)
    report_dir = None if args.report is None else _report_dir(args.report)
    paths = [str(Path(capture).resolve()) for capture in captures]
    if args.json not in (None, "-") and str(Path(args.json).expanduser().resolve()) in paths:
        raise ConfigError(
            f"--json {args.json!r} is one of the captures; the report would overwrite it: "
            "give the report its own file"
        )
    task = functools.partial(
        replay_call, disabled=tuple(sorted(host.disabled)), enabled=tuple(args.enable)
    )
    progress = Progress(sys.stderr, len(captures), live=not args.quiet and sys.stderr.isatty())
    started_s = time.perf_counter()
    with _runner(args) as runner, _alerts_quiet(args):
        order = {capture: index for index, capture in enumerate(captures)}
        rows: list[Row] = [{} for _ in captures]
        try:
            for row in runner.run(task, captures, paths):
                rows[order[row["capture"]]] = row
                progress.add(row)
        finally:
            progress.close()
    wall_s = time.perf_counter() - started_s
    run = {
        "command": "analyze",
        "scheduler": runner.where,
        "workers": runner.workers,
        "wall_s": round(wall_s, 3),
    }
    report = fleet_report(rows, run=run)
    _write(args, report_dir, report)
    _explain(report, sys.stderr)
    return EXIT_OK if report["failed"] == 0 else EXIT_FAILED


@contextlib.contextmanager
def _alerts_quiet(args: argparse.Namespace) -> Iterator[None]:
    """Per-call alert lines (thousands of them) only with ``-v``: the report is the output.
    Dask workers never show them; this keeps ``--workers 0`` alike."""
    alerts = logging.getLogger("jitterline.alerts")
    level = alerts.level
    if not args.verbose and args.log_level is None:
        alerts.setLevel(logging.ERROR)
    try:
        yield
    finally:
        alerts.setLevel(level)


def _report_dir(value: str) -> Path:
    """Checked before any replay, like every output path: a typo costs no run."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--report {value!r} is a file; give a directory (created if missing)")
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not os.access(existing, os.W_OK):
        raise ConfigError(f"--report {value!r} is not writable; pick a writable directory")
    return path


def _write(args: argparse.Namespace, report_dir: Path | None, report: dict[str, Any]) -> None:
    from .analyze_report import render_json, write_report

    if report_dir is not None:
        written = write_report(report_dir, report)
        print(f"analyze: report: {written[0]}", file=sys.stderr)
    text = render_json(report)
    if args.json is None and report_dir is not None:
        return
    if args.json is None or args.json == "-":
        print(text, flush=True)
        return
    try:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot write the report to --json {args.json!r} ({exc.strerror}); "
            "pick a writable path"
        ) from exc


def _explain(report: dict[str, Any], out: TextIO) -> None:
    run = report["run"]
    where = {"serial": "in this process", "local": f"on {run['workers']} local Dask workers"}
    print(
        f"analyze: {report['captures']} captures in {run['wall_s']:.1f} s "
        f"{where.get(run['scheduler'], 'on the Dask cluster at ' + run['scheduler'])}: "
        f"{report['replayed']} replayed, {report['failed']} failed",
        file=out,
    )
    if report["verdicts"]:
        counts = ", ".join(f"{verdict} {n}" for verdict, n in report["verdicts"].items())
        print(f"verdicts: {counts}", file=out)
        late, delay = report["distributions"]["late_rate"], report["distributions"]["delay_p95_ms"]
        print(
            f"late loss per call: p50 {_num(late['p50'])}, p95 {_num(late['p95'])}, "
            f"max {_num(late['max'])}; delay p95 per call: p50 {_num(delay['p50'])} ms, "
            f"p95 {_num(delay['p95'])} ms, max {_num(delay['max'])} ms",
            file=out,
        )
    for failure in report["failures"][:FAILURES_SHOWN]:
        print(f"failed: {failure['capture']}: {failure['error']}", file=out)
    hidden = len(report["failures"]) - FAILURES_SHOWN
    if hidden > 0:
        print(f"failed: {hidden} more (the JSON report lists them all)", file=out)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
