"""The ``jitterline`` command: demo, run, serve, replay, plugins.

Exit codes are an interface: 0 done, 1 the stream failed for another reason (TLS, a fatal
close code), 2 usage error (bad option, unreadable capture), 3 authentication failed, 4 gave
up after the maximum reconnect attempts, 130 interrupted (after a clean shutdown, with the
summary printed). Errors are one line on stderr; ``--debug`` adds the traceback.

Output: the live status and the diagnosis in words go to stderr, the JSON summary to
stdout (or ``--json FILE``), so ``jitterline demo > summary.json`` just works.
Credentials come only from the environment (``JITTERLINE_CLIENT_ID``,
``JITTERLINE_CLIENT_SECRET``), never from argv, where ``ps`` and shell history would show
them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from . import __version__, loadgen
from .codecs import StreamCodec
from .config import CONCEALMENTS, PipelineConfig
from .emulator import PROFILES, Emulator, ToneSource, WavSource
from .emulator.audio import stream_format
from .errors import AuthError, ConfigError, ConnectionLost, JitterlineError
from .live import RunResult, SessionOptions, replay, run_live
from .plugins import DISABLE_ENV, PluginHost
from .protocols.appfoundry import FORMATS
from .server.command import SERVE_EXAMPLES, add_serve_options, serve
from .status import make_status
from .summary import render, summarize
from .transport import BackoffPolicy, TokenProvider, redact_url

__all__ = [
    "AUTH_URL_ENV",
    "CLIENT_ID_ENV",
    "CLIENT_SECRET_ENV",
    "EXIT_AUTH",
    "EXIT_FAILED",
    "EXIT_GAVE_UP",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "main",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_GAVE_UP = 4
EXIT_INTERRUPTED = 130

CLIENT_ID_ENV = "JITTERLINE_CLIENT_ID"
CLIENT_SECRET_ENV = "JITTERLINE_CLIENT_SECRET"
AUTH_URL_ENV = "JITTERLINE_AUTH_URL"

DEMO_GRACE_S = 5.0
"""How long ``demo`` waits past ``--duration`` for the emulator to end the stream itself
(the slow-server profile sends its last frame late, flaky ones reconnect)."""

DEMO_DURATION_S = 10.0
"""The demo's length without ``--duration``, unless ``--audio`` gives the file's own."""

DEMO_PING_INTERVAL_S = 1.0
"""Pings once a second in the demo, so even a short run measures an RTT."""

DEMO_BACKOFF = BackoffPolicy(initial_s=0.2, max_s=2.0)
"""The demo's endpoint is local and always comes back: reconnect quickly, so the flaky
profile shows short gaps rather than the seconds a real service's backoff would wait."""

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace, PluginHost], int]


# -- commands -------------------------------------------------------------------------------


def _plugins(args: argparse.Namespace, host: PluginHost) -> int:
    for info in host.info():
        state = "enabled" if info.enabled else "disabled"
        origin = f" ({info.distribution})" if info.distribution else ""
        print(f"{info.name}{origin}: {state}{_extra(host.pm.get_plugin(info.name))}")
        for hook in info.hooks:
            print(f"    {hook}")
    return EXIT_OK


def _extra(plugin: object) -> str:
    """A plugin that needs an optional library names its extra (``extra``) and the
    modules it imports (``requires``): say whether they are installed."""
    extra = getattr(plugin, "extra", "")
    if not extra:
        return ""
    missing = [name for name in getattr(plugin, "requires", ()) if find_spec(name) is None]
    if not missing:
        return f" [extra {extra}: installed]"
    return f" [extra {extra}: needs {', '.join(missing)}: pip install 'jitterline[{extra}]']"


def _demo(args: argparse.Namespace, host: PluginHost) -> int:
    config = _config(args, dialect="appfoundry")
    audio = _demo_audio(args, host)
    duration_s = float(audio["duration_s"])
    emulator = Emulator(PROFILES[args.profile], seed=args.seed, **audio)
    with emulator:
        options = SessionOptions(
            url=emulator.ws_url,
            tokens=TokenProvider(emulator.auth_url, emulator.client_id, emulator.client_secret),
            max_attempts=args.max_attempts,
            duration_s=duration_s + DEMO_GRACE_S,
            ping_interval_s=DEMO_PING_INTERVAL_S,
            backoff=DEMO_BACKOFF,
        )
        source = {"command": "demo", "profile": args.profile, "seed": args.seed}
        result = _live(args, host, options, config, source)
    return _report(args, result, {**source, "duration_s": duration_s})


def _demo_audio(args: argparse.Namespace, host: PluginHost) -> dict[str, Any]:
    """The endpoint's audio: a tone for ``--duration`` (10 s), or ``--audio FILE`` played
    once at its own rate and channels when ``--codec`` carries them (resampled otherwise),
    for ``--duration`` or the file's length."""
    codec_name = args.codec.upper()
    codec = host.codecs.get(codec_name)
    if args.audio is None:
        source: ToneSource | WavSource = ToneSource()
        rate, channels, duration_s = 8000, 1, args.duration or DEMO_DURATION_S
    else:
        # resample=True only converts when asked for another rate than the file's.
        source = WavSource(args.audio, mono=False, loop=False, resample=True)
        channels = source.channels
        rate = stream_format(codec_name, source.sample_rate, channels)
        duration_s = args.duration or source.duration_s
    encoder = codec.encoder(rate, channels) if isinstance(codec, StreamCodec) else None
    return {
        "codec": codec_name,
        "sample_rate": rate,
        "channels": channels,
        "source": source,
        "encoder": encoder,
        "duration_s": duration_s,
    }


def _run(args: argparse.Namespace, host: PluginHost) -> int:
    config = _config(args, dialect=args.dialect)
    options = SessionOptions(
        url=args.url,
        tokens=_tokens(args),
        max_attempts=args.max_attempts,
        allow_insecure=args.allow_insecure,
        duration_s=args.duration,
    )
    source = {"command": "run", "url": redact_url(args.url), "dialect": args.dialect}
    result = _live(args, host, options, config, source)
    return _report(args, result, source)


def _serve(args: argparse.Namespace, host: PluginHost) -> int:
    _configure_plugins(args, host)
    return serve(args, host, _config(args, dialect=args.dialect))


def _replay(args: argparse.Namespace, host: PluginHost) -> int:
    _configure_plugins(args, host)
    header, result = replay(Path(args.capture), host=host, overrides=_pipeline_options(args))
    run = {"command": "replay", "capture": str(args.capture), "recorded": header.source}
    return _report(args, result, run)


# -- helpers --------------------------------------------------------------------------------


_PIPELINE_OPTIONS = (
    "buffer_policy",
    "buffer_ms",
    "min_buffer_ms",
    "max_buffer_ms",
    "window_frames",
    "window_s",
    "conceal",
)


def _pipeline_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``PipelineConfig`` fields the user set; the others keep their defaults (or, on
    replay, the recorded values)."""
    given = {name: getattr(args, name) for name in _PIPELINE_OPTIONS}
    return {name: value for name, value in given.items() if value is not None}


def _config(args: argparse.Namespace, *, dialect: str) -> PipelineConfig:
    return PipelineConfig(dialect=dialect, **_pipeline_options(args))


def _tokens(args: argparse.Namespace) -> TokenProvider | None:
    client_id = os.environ.get(CLIENT_ID_ENV, "")
    secret = os.environ.get(CLIENT_SECRET_ENV, "")
    if not client_id and not secret:
        log.warning(
            "%s and %s are not set: connecting without a bearer token",
            CLIENT_ID_ENV,
            CLIENT_SECRET_ENV,
        )
        return None
    if not client_id or not secret:
        missing = CLIENT_ID_ENV if not client_id else CLIENT_SECRET_ENV
        raise ConfigError(
            f"{missing} is not set; set both {CLIENT_ID_ENV} and {CLIENT_SECRET_ENV}"
        )
    auth = args.auth_url or os.environ.get(AUTH_URL_ENV) or args.region
    if not auth:
        raise ConfigError(
            f"no auth server: pass --auth-url URL or --region NAME, or set {AUTH_URL_ENV}"
        )
    return TokenProvider(auth, client_id, secret)


def _configure_plugins(args: argparse.Namespace, host: PluginHost) -> None:
    host.call("jitterline_configure", options=dict(vars(args)))


def _live(
    args: argparse.Namespace,
    host: PluginHost,
    options: SessionOptions,
    config: PipelineConfig,
    source: dict[str, Any],
) -> RunResult:
    _configure_plugins(args, host)
    return run_live(
        options,
        config=config,
        host=host,
        status=None if args.quiet else make_status(sys.stderr),
        record=None if args.record is None else Path(args.record),
        source=source,
    )


def _report(args: argparse.Namespace, result: RunResult, run: dict[str, Any]) -> int:
    code = _exit_code(result)
    if result.messages > 0 or result.outcome is None:
        diagnosis = result.diagnosis
        print(f"diagnosis: {diagnosis.verdict}: {diagnosis.summary}", file=sys.stderr)
        print(f"action: {diagnosis.action}", file=sys.stderr)
        failures = result.plugin_failures
        summary = summarize(result.stats, diagnosis, run=run, plugin_failures=failures)
        _write_summary(args, render(summary))
    if result.outcome is not None:
        print(f"jitterline: error: {result.outcome}", file=sys.stderr)
    elif result.interrupted:
        print("jitterline: interrupted; summary above is up to the interruption", file=sys.stderr)
    return code


def _write_summary(args: argparse.Namespace, text: str) -> None:
    if args.json is None:
        print(text)
        return
    try:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot write the summary to {args.json!r} ({exc.strerror}); pick a writable path"
        ) from exc


def _exit_code(result: RunResult) -> int:
    outcome = result.outcome
    if isinstance(outcome, AuthError):
        return EXIT_AUTH
    if isinstance(outcome, ConnectionLost):
        return EXIT_GAVE_UP
    if outcome is not None:
        return EXIT_FAILED
    return EXIT_INTERRUPTED if result.interrupted else EXIT_OK


def _host(argv: Sequence[str]) -> PluginHost:
    pre = argparse.ArgumentParser(add_help=False)
    _plugin_switches(pre)
    known, _ = pre.parse_known_args(argv)
    return PluginHost(disabled=known.disable, enabled=known.enable, load_entrypoints=True)


# -- the parser -----------------------------------------------------------------------------

_FORMATTER = argparse.RawDescriptionHelpFormatter


def _plugin_switches(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--disable",
        action="append",
        default=[],
        metavar="NAME",
        help=f"block a plugin (repeatable; also {DISABLE_ENV}=a,b)",
    )
    parser.add_argument(
        "--enable",
        action="append",
        default=[],
        metavar="NAME",
        help=f"load a plugin even if {DISABLE_ENV} blocks it (repeatable)",
    )


def _common(parser: argparse.ArgumentParser, host: PluginHost) -> None:
    """Options of every stream command: buffer, window, output, logging, plugins."""
    buffer = parser.add_argument_group("jitter buffer and latency window")
    buffer.add_argument(
        "--buffer-policy",
        choices=list(host.policies),
        help="how the buffer target is sized (default: adaptive)",
    )
    buffer.add_argument(
        "--buffer-ms", type=float, metavar="MS", help="initial buffer target, or the fixed one"
    )
    buffer.add_argument("--min-buffer-ms", type=float, metavar="MS", help="lowest target (20)")
    buffer.add_argument("--max-buffer-ms", type=float, metavar="MS", help="highest target (1000)")
    buffer.add_argument(
        "--window-frames", type=int, metavar="N", help="latency window size in frames (500)"
    )
    buffer.add_argument(
        "--window-s", type=float, metavar="S", help="latency window age limit in seconds (10)"
    )
    buffer.add_argument(
        "--conceal",
        choices=CONCEALMENTS,
        help="what plays for a lost PCM frame: silence (default), repeat, or speech (a "
        "faded pitch-period repeat); Opus always uses its decoder's concealment",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--json", metavar="FILE", help="write the JSON summary to FILE")
    output.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default: warning)",
    )
    output.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    _plugin_switches(parser)
    host.call("jitterline_add_options", parser=parser)


def _live_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--record", metavar="FILE", help="write every raw message to FILE (JSON Lines capture)"
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=10,
        metavar="N",
        help="give up (exit 4) after N connection attempts in a row fail (default: 10)",
    )
    parser.add_argument("--quiet", action="store_true", help="no live status display")


DEMO_EXAMPLES = """examples:
  jitterline demo                                   # 10 s on a clean link
  jitterline demo --profile wifi --duration 5
  jitterline demo --profile clean --buffer-policy fixed --buffer-ms 400
  jitterline demo --profile lossy --record lossy.jsonl --json summary.json
  jitterline demo --audio speech.wav --profile wifi --conceal speech --wav out.wav
  jitterline demo --codec opus --profile lossy
profiles:
""" + "\n".join(f"  {name:12s}{imp.description}" for name, imp in PROFILES.items())

RUN_EXAMPLES = f"""credentials come only from the environment:
  {CLIENT_ID_ENV}, {CLIENT_SECRET_ENV}; auth server from --auth-url, {AUTH_URL_ENV}
  or --region
examples:
  export {CLIENT_ID_ENV}=... {CLIENT_SECRET_ENV}=...
  jitterline run wss://audio.example.com/stream --region eu-west-1
  jitterline run wss://audio.example.com/stream --auth-url https://login.mypurecloud.ie \\
      --duration 60 --record call.jsonl
  jitterline run ws://127.0.0.1:8765/stream --dialect twilio
"""

REPLAY_EXAMPLES = """examples:
  jitterline demo --profile wifi --record wifi.jsonl && jitterline replay wifi.jsonl
  jitterline replay call.jsonl --buffer-policy fixed --buffer-ms 120   # what if?
"""


def _parser(host: PluginHost) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jitterline",
        description="Resilient real-time audio stream pipeline for WebSocket voice streams.",
        epilog="start with: jitterline demo",
    )
    parser.add_argument("--version", action="version", version=f"jitterline {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="stream from a local emulated endpoint through the pipeline",
        description="Start the local endpoint with an impairment profile, connect the full\n"
        "pipeline to it, show a live status, then print the diagnosis (stderr) and the\n"
        "JSON summary (stdout).",
        epilog=DEMO_EXAMPLES,
        formatter_class=_FORMATTER,
    )
    demo.add_argument(
        "--profile",
        default="clean",
        choices=list(PROFILES),
        help="impairment profile (clean; see below)",
    )
    demo.add_argument(
        "--duration",
        type=_positive,
        metavar="S",
        help="seconds of audio (10, or the --audio file's length)",
    )
    demo.add_argument(
        "--codec",
        default="L16",
        type=str.upper,
        choices=FORMATS,
        help="codec the endpoint sends (L16; OPUS needs libopus)",
    )
    demo.add_argument(
        "--audio",
        metavar="FILE.wav",
        help="stream this 16-bit WAV once (its rate and channels; resampled if the codec "
        "needs another rate) instead of a tone",
    )
    demo.add_argument("--seed", type=int, default=0, metavar="N", help="impairment seed (0)")
    _live_options(demo)
    _common(demo, host)
    demo.set_defaults(handler=_demo)

    run = commands.add_parser(
        "run",
        help="stream from a real endpoint",
        description="Connect the pipeline to a WebSocket endpoint until it ends the stream,\n"
        "--duration passes, or Ctrl-C (clean shutdown; the summary is still printed).",
        epilog=RUN_EXAMPLES,
        formatter_class=_FORMATTER,
    )
    run.add_argument("url", help="wss:// URL (ws:// only to loopback unless --allow-insecure)")
    run.add_argument("--dialect", default="appfoundry", choices=list(host.dialects))
    run.add_argument("--auth-url", metavar="URL", help=f"OAuth base URL (or {AUTH_URL_ENV})")
    run.add_argument("--region", metavar="NAME", help="Genesys Cloud region, e.g. eu-west-1")
    run.add_argument(
        "--duration", type=_positive, metavar="S", help="stop after S seconds (default: never)"
    )
    run.add_argument(
        "--allow-insecure",
        action="store_true",
        help="allow cleartext ws:// to a non-loopback host (logs a warning)",
    )
    _live_options(run)
    _common(run, host)
    run.set_defaults(handler=_run)

    srv = commands.add_parser(
        "serve",
        help="receive Genesys AudioHook / Audio Connector or Twilio Media Streams",
        description="Listen for inbound sessions, one pipeline per session and channel;\n"
        "a summary per channel as each session ends (log, and --json FILE as JSON\n"
        "Lines, - for stdout); SIGTERM or Ctrl-C drains gracefully (exit 0).",
        epilog=SERVE_EXAMPLES,
        formatter_class=_FORMATTER,
    )
    add_serve_options(srv)
    _common(srv, host)
    srv.set_defaults(handler=_serve, log_level="info")

    rep = commands.add_parser(
        "replay",
        help="run a capture through the pipeline on virtual time",
        description="Replay a --record capture as fast as the CPU allows; without buffer\n"
        "options it prints the same summary and diagnosis as the recorded run.",
        epilog=REPLAY_EXAMPLES,
        formatter_class=_FORMATTER,
    )
    rep.add_argument("capture", help="a JSON Lines file written by --record")
    _common(rep, host)
    rep.set_defaults(handler=_replay)

    plugins = commands.add_parser(
        "plugins",
        help="list installed plugins and their hooks",
        description="List the installed plugins, the hooks each implements, and whether\n"
        "it is enabled.",
        epilog="examples:\n  jitterline plugins\n  jitterline plugins --disable wav_sink",
        formatter_class=_FORMATTER,
    )
    _plugin_switches(plugins)
    plugins.set_defaults(handler=_plugins)

    loadgen.add_parser(commands)
    host.call("jitterline_register_commands", subparsers=commands)
    return parser


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of seconds")
    return value


def _setup_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    for name in ("jitterline", "jitterline_plugins"):
        logging.getLogger(name).setLevel(level.upper())


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in arguments
    try:
        host = _host(arguments)
        parser = _parser(host)
        args = parser.parse_args(arguments)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        _setup_logging(getattr(args, "log_level", "warning"))
        handler: Handler = args.handler
        return handler(args, host)
    except JitterlineError as exc:
        _explain(exc, debug)
        return EXIT_AUTH if isinstance(exc, AuthError) else EXIT_USAGE
    except KeyboardInterrupt:
        print("jitterline: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: still one line, unless --debug asks for more
        _explain(exc, debug, prefix=f"internal error ({type(exc).__name__}): ")
        return EXIT_FAILED


def _explain(exc: BaseException, debug: bool, prefix: str = "") -> None:
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"jitterline: error: {prefix}{exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
