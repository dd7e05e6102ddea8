"""``jitterline serve``: options to a running server, then a graceful drain on a signal.

The main thread only waits: the server, every session and the status run on the
runtime's loop. SIGTERM (what an orchestrator sends) and SIGINT (Ctrl-C) both start the
drain, after which the command exits 0: a drained server did its job. A second Ctrl-C
during the drain interrupts it (exit 130). ``--linger`` keeps the process (and so a
metrics exporter) up a while after the drain, so that Prometheus scrapes the final
counts before the process is gone. ``--workers N`` runs N of these under a parent
(``workers``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from .. import checks
from ..config import PipelineConfig
from ..errors import ConfigError
from ..plugins import PluginHost
from ..runtime import Runtime, tune_gc
from ..serve_status import ServeStatus
from .config import API_KEYS_ENV, SERVE_DIALECTS, TWILIO_TOKEN_ENV, ServeOptions, load_credentials
from .prompt import PromptPlayer, check_prompt_dialect, load_prompt
from .report import SummaryWriter
from .shell import InboundServer
from .workers import parse_workers, worker_role

__all__ = ["SERVE_EXAMPLES", "add_serve_options", "serve", "serve_options", "stop_limit_s"]

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 10.0
_WAIT_SLICE_S = 0.25
_DRAIN_MARGIN_S = 5.0

SERVE_EXAMPLES = f"""credentials come only from the environment or a file:
  {API_KEYS_ENV}=KEY or KEY:BASE64SECRET (comma-separated), or --api-keys-file FILE
  {TWILIO_TOKEN_ENV}=<auth token>  (checks X-Twilio-Signature)
examples:
  jitterline serve --dialect audiohook --port 8080 --json sessions.jsonl
  jitterline serve --dialect twilio --port 8080 --path /twilio \\
      --public-url wss://voice.example.com --host 0.0.0.0
  jitterline serve --dialect audioconnector --prompt welcome.wav   # a prompt per caller
  curl -i http://127.0.0.1:8080/health      # 200, 503 while draining
  jitterline serve --workers auto --port 8080 --worker-port 9000 --metrics-port 9100 \\
      --drain-grace 3600    # one worker per core; kill -HUP <parent> = rolling restart
"""


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``serve`` itself; the CLI adds the pipeline's and the plugins'."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, metavar="N", help="port (8080)")
    parser.add_argument("--dialect", default="audiohook", choices=list(SERVE_DIALECTS))
    parser.add_argument(
        "--path", default="/", metavar="P", help="WebSocket path prefix sessions use (/)"
    )
    parser.add_argument(
        "--max-sessions", type=int, default=500, metavar="N", help="refuse more (503) (500)"
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM / Ctrl-C, wait this long for sessions to close (30)",
    )
    parser.add_argument(
        "--drain-grace",
        type=float,
        default=0.0,
        metavar="S",
        help="on a drain, let sessions run up to S before ending them (0: end at once); "
        "a rolling restart that must not cut calls sets the longest call",
    )
    parser.add_argument(
        "--linger",
        type=float,
        default=0.0,
        metavar="S",
        help="after the drain, stay up S (metrics still served) before exiting (0)",
    )
    parser.add_argument(
        "--workers",
        type=parse_workers,
        metavar="N|auto",
        help="N worker processes on --port (auto: one per core); see docs/deploy.md",
    )
    parser.add_argument(
        "--worker-port",
        type=int,
        default=0,
        metavar="BASE",
        help="with --workers: worker i also listens on BASE+i, its own health and "
        "sessions (0: any free port); --metrics-port BASE gives it BASE+i too",
    )
    for hidden in ("--worker-index", "--listen-fd", "--ready-fd", "--parent-fd"):
        parser.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--api-keys-file", metavar="FILE", help=f"AudioHook API keys (else {API_KEYS_ENV})"
    )
    parser.add_argument(
        "--public-url",
        metavar="URL",
        help="wss://host[:port] the peer dials, behind a TLS-terminating proxy "
        "(default: X-Forwarded-Proto/Host, else Host)",
    )
    parser.add_argument("--certfile", metavar="FILE", help="serve TLS with this certificate")
    parser.add_argument("--keyfile", metavar="FILE", help="the certificate's private key")
    parser.add_argument(
        "--status-every", type=float, default=5.0, metavar="S", help="status period (5)"
    )
    parser.add_argument(
        "--status-sessions", action="store_true", help="a status line per running session"
    )
    _add_prompt_option(parser)


def _add_prompt_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prompt",
        metavar="FILE.wav",
        help="play this 16-bit WAV to every caller once the stream opens (audioconnector, twilio)",
    )


def _register_prompt(args: argparse.Namespace, host: PluginHost, dialect: str) -> None:
    """``--prompt``: loaded and checked before listening, played by a plugin of our own."""
    if getattr(args, "prompt", None) is None:
        return
    check_prompt_dialect(dialect)
    host.register(PromptPlayer(load_prompt(args.prompt)), name="serve-prompt")


def serve_options(args: argparse.Namespace) -> ServeOptions:
    """The server's options from the command line, checked (also by a ``--workers``
    parent, so that a bad option is one error, not one per worker)."""
    options = ServeOptions(
        host=args.host,
        port=args.port,
        dialect=args.dialect,
        path=args.path,
        max_sessions=args.max_sessions,
        drain_timeout_s=args.drain_timeout,
        drain_grace_s=args.drain_grace,
        credentials=load_credentials(api_keys_file=args.api_keys_file),
        public_url=args.public_url,
        certfile=args.certfile,
        keyfile=args.keyfile,
    )
    options.check_exposure()
    checks.number("--status-every", args.status_every, low=0.0, above=True, unit="s")
    checks.number("--linger", args.linger, low=0.0, unit="s")
    return options


def stop_limit_s(options: ServeOptions, linger_s: float) -> float:
    """The longest a drain can take: grace, then the protocol's close, then 1001."""
    return (
        options.drain_grace_s
        + options.drain_timeout_s
        + options.close_timeout_s
        + _DRAIN_MARGIN_S
        + linger_s
    )


def serve(args: argparse.Namespace, host: PluginHost, config: PipelineConfig) -> int:
    """Run until SIGTERM or Ctrl-C, drain, return the exit code (0)."""
    options = serve_options(args)
    _register_prompt(args, host, options.dialect)
    role = worker_role(args)
    runtime = Runtime(host)
    tune_gc()
    run: dict[str, object] = {"command": "serve", "dialect": options.dialect}
    run["path"] = options.path
    if role is not None:
        run["worker"] = role.index
    server = InboundServer(
        runtime,
        options,
        config,
        writer=SummaryWriter(args.json),
        run=run,
        shared=None if role is None else role.listener(),
    )
    try:
        port = runtime.ioloop.run(server.start()).result(_START_TIMEOUT_S)
    except OSError as exc:
        server.writer.close()
        raise ConfigError(
            f"cannot listen on {options.host}:{options.port} ({exc.strerror}); "
            "pick another --port or --host"
        ) from None
    scheme = "wss" if options.certfile else "ws"
    print(
        f"jitterline serve: listening on {scheme}://{options.host}:{port}{options.path}",
        file=sys.stderr,
        flush=True,
    )
    if role is not None:
        role.ready(port)
    status = None
    if not args.quiet:
        status = ServeStatus(
            server,
            sys.stderr,
            every_s=args.status_every,
            every_session=args.status_sessions,
        )
        runtime.call(status.start)
    with _stop_on_sigterm() as stop:
        if role is not None:
            role.watch_parent(stop)
        _wait(stop)
    print("jitterline serve: draining", file=sys.stderr, flush=True)
    runtime.ioloop.run(server.drain()).result(stop_limit_s(options, 0.0))
    if status is not None:
        runtime.ioloop.run(status.stop()).result(_START_TIMEOUT_S)
    if args.linger > 0:
        print(f"jitterline serve: drained; exiting in {args.linger:g} s", file=sys.stderr)
        _wait(_after(args.linger))
    return 0


def _after(delay_s: float) -> threading.Event:
    """An event set ``delay_s`` from now (``_wait`` on it: a Ctrl-C cuts it short)."""
    done = threading.Event()
    timer = threading.Timer(delay_s, done.set)
    timer.daemon = True
    timer.start()
    return done


@contextmanager
def _stop_on_sigterm() -> Iterator[threading.Event]:
    """An event SIGTERM sets; the previous handler comes back afterwards."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait(stop: threading.Event) -> None:
    """Until SIGTERM or Ctrl-C; in slices, so SIGINT's KeyboardInterrupt is seen."""
    try:
        while not stop.wait(_WAIT_SLICE_S):
            pass
    except KeyboardInterrupt:
        log.info("interrupted")
