"""The ``jitterline`` command: demo, run, replay, plugins.

Exit codes are an interface (docs/cli.md lists them): 0 done, 1 the stream failed for
another reason (TLS, a fatal close code), 2 usage error (bad option, unwritable output,
unreadable capture), 3 authentication failed, 4 gave up after ``--max-attempts``, 5 an
output failed during the run (a sink plugin raised; the summary is still written), 6 no
audio was played (nothing arrived, or nothing the dialect could decode), 130 interrupted
by Ctrl-C, 143 stopped by SIGTERM (both after a clean shutdown, with the summary and the
capture's ``end`` line written). Errors are one line on stderr in the user's terms (flags
and environment variables, not Python parameters); ``--debug`` adds the traceback.

Output: the live status, log lines and the diagnosis in words go to stderr, the JSON
summary to stdout (or ``--json FILE``), so ``jitterline demo > summary.json`` just works.
Every output path is checked before anything connects, so a typo costs no run.
Credentials come only from the environment (``JITTERLINE_CLIENT_ID``,
``JITTERLINE_CLIENT_SECRET``), never from argv, where ``ps`` and shell history would show
them.

Start-up is lazy: ``jitterline --version`` imports neither numpy nor reactivex nor the
WebSocket libraries; the commands import what they use.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, cast

from . import __version__
from .errors import AuthError, ConfigError, ConnectionLost, JitterlineError

if TYPE_CHECKING:
    from urllib.parse import SplitResult

    from .config import PipelineConfig
    from .live import RunResult, SessionOptions
    from .plugins import PluginHost
    from .status import LiveView
    from .transport import TokenProvider

__all__ = [
    "AUTH_URL_ENV",
    "CLIENT_ID_ENV",
    "CLIENT_SECRET_ENV",
    "EXIT_AUTH",
    "EXIT_FAILED",
    "EXIT_GAVE_UP",
    "EXIT_INTERRUPTED",
    "EXIT_NO_AUDIO",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "main",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_GAVE_UP = 4
EXIT_OUTPUT = 5
EXIT_NO_AUDIO = 6
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

CLIENT_ID_ENV = "JITTERLINE_CLIENT_ID"
CLIENT_SECRET_ENV = "JITTERLINE_CLIENT_SECRET"
AUTH_URL_ENV = "JITTERLINE_AUTH_URL"
DISABLE_ENV = "JITTERLINE_DISABLE_PLUGINS"  # the plugin host's; repeated to keep --help lazy

DEFAULT_MAX_ATTEMPTS = 10

INBOUND_ONLY = frozenset({"audiohook", "audioconnector", "twilio"})
"""Dialects whose platforms dial us: ``run`` (which dials out) refuses them."""

DEMO_GRACE_S = 5.0
"""How long ``demo`` waits past ``--duration`` for the emulator to end the stream itself
(the slow-server profile sends its last frame late, flaky ones reconnect)."""

DEMO_DURATION_S = 10.0
"""The demo's length without ``--duration``, unless ``--audio`` gives the file's own."""

DEMO_PING_INTERVAL_S = 1.0
"""Pings once a second in the demo, so even a short run measures an RTT."""

DEMO_BACKOFF_S = (0.2, 2.0)
"""The demo's endpoint is local and always comes back: reconnect quickly, so the flaky
profile shows short gaps rather than the seconds a real service's backoff would wait."""

RUN_BACKOFF_S = (0.5, 3.0)
"""``run``'s first delay and cap: 10 attempts to an endpoint that refuses at once take
0.5 + 1 + 2 + 6 x 3 = 21.5 s plus at most 25 % jitter, so a wrong URL gives up within
about 30 s, one log line per attempt, rather than after minutes of silence."""

OUTPUT_METAVARS = frozenset({"FILE", "PATH", "TEMPLATE"})
"""A plugin option whose metavar is one of these names an output path: it is checked
before connecting and compared with the other outputs, like ``--json`` and ``--record``."""

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace, "PluginHost"], int]


# -- commands -------------------------------------------------------------------------------


def _plugins(args: argparse.Namespace, host: PluginHost) -> int:
    rows: list[dict[str, Any]] = [
        {
            "name": info.name,
            "distribution": info.distribution or None,
            "enabled": info.enabled,
            "hooks": list(info.hooks),
        }
        for info in host.info()
    ]
    rows += [
        {"name": name, "distribution": None, "enabled": False, "hooks": [], "broken": why}
        for name, why in sorted(host.broken.items())
    ]
    if args.plugins_json:
        import json

        print(json.dumps({"plugins": rows}, indent=2))
        return EXIT_OK
    for row in rows:
        origin = f" ({row['distribution']})" if row["distribution"] else ""
        state = f"broken ({row['broken']})" if "broken" in row else "enabled"
        state = state if row["enabled"] or "broken" in row else "disabled"
        print(f"{row['name']}{origin}: {state}{_extra(host.pm.get_plugin(row['name']))}")
        for hook in row["hooks"]:
            print(f"    {hook}")
    return EXIT_OK


def _extra(plugin: object) -> str:
    """A plugin that needs an optional library names its extra (``extra``) and the
    modules it imports (``requires``): say whether they are installed."""
    from importlib.util import find_spec

    extra = getattr(plugin, "extra", "")
    if not extra:
        return ""
    missing = [name for name in getattr(plugin, "requires", ()) if find_spec(name) is None]
    if not missing:
        return f" [extra {extra}: installed]"
    return f" [extra {extra}: needs {', '.join(missing)}: pip install 'jitterline[{extra}]']"


def _demo(args: argparse.Namespace, host: PluginHost) -> int:
    from .emulator import PROFILES, Emulator
    from .live import SessionOptions
    from .transport import BackoffPolicy, TokenProvider

    if args.dialect != "appfoundry":
        return _demo_inbound(args, host)
    config = _config(args, dialect="appfoundry")
    _configure_plugins(args, host)
    audio = _demo_audio(args, host)
    duration_s = float(audio["duration_s"])
    emulator = Emulator(PROFILES[args.profile], seed=args.seed, **audio)
    with emulator:
        initial_s, max_s = DEMO_BACKOFF_S
        options = SessionOptions(
            url=emulator.ws_url,
            tokens=TokenProvider(emulator.auth_url, emulator.client_id, emulator.client_secret),
            max_attempts=_max_attempts(args),
            duration_s=duration_s + DEMO_GRACE_S,
            ping_interval_s=DEMO_PING_INTERVAL_S,
            backoff=BackoffPolicy(initial_s=initial_s, max_s=max_s),
        )
        source = {"command": "demo", "profile": args.profile, "seed": args.seed}
        result, view = _live(args, host, options, config, source, shown_duration_s=duration_s)
    return _report(args, result, {**source, "duration_s": duration_s}, view)


def _demo_inbound(args: argparse.Namespace, host: PluginHost) -> int:
    """``demo --dialect audiohook|audioconnector|twilio``: a real ``serve`` on loopback
    and the local endpoint playing the platform against it (``jitterline.inbound_demo``).
    One channel prints one summary; a stereo AudioHook call prints a JSON array, one
    summary per channel (each also on stderr as a diagnosis line)."""
    import json

    from .inbound_demo import run_inbound_demo

    if args.audio is not None or args.codec != "L16":
        raise ConfigError(
            f"--audio and --codec drive the appfoundry endpoint; the {args.dialect} player "
            "streams its own tones (drop them, or use --dialect appfoundry)"
        )
    config = _config(args, dialect=args.dialect)
    _configure_plugins(args, host)
    duration_s = args.duration or DEMO_DURATION_S
    run = {
        "command": "demo",
        "dialect": args.dialect,
        "profile": args.profile,
        "seed": args.seed,
        "duration_s": duration_s,
    }
    demo = run_inbound_demo(
        host,
        config,
        dialect=args.dialect,
        profile=args.profile,
        seed=args.seed,
        duration_s=duration_s,
        run=run,
    )
    if not demo.summaries:
        why = demo.player.refused or demo.player.error or "the session never opened"
        print(f"jitterline: error: the {args.dialect} session failed: {why}", file=sys.stderr)
        return EXIT_FAILED
    for summary in demo.summaries:
        diagnosis = summary["diagnosis"]
        channel = summary["stream"]["channel"]
        where = f" ({channel})" if channel else ""
        print(f"diagnosis{where}: {diagnosis['verdict']}: {diagnosis['summary']}", file=sys.stderr)
        print(f"action{where}: {diagnosis['action']}", file=sys.stderr)
    document: Any = demo.summaries[0] if len(demo.summaries) == 1 else list(demo.summaries)
    _write_summary(args, json.dumps(document, indent=2, allow_nan=False))
    return EXIT_OK


def _demo_audio(args: argparse.Namespace, host: PluginHost) -> dict[str, Any]:
    """The endpoint's audio: a tone for ``--duration`` (10 s), or ``--audio FILE`` played
    once at its own rate and channels when ``--codec`` carries them (resampled otherwise),
    for ``--duration`` or the file's length."""
    from .codecs import StreamCodec
    from .emulator import ToneSource, WavSource
    from .emulator.audio import stream_format

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
    from .live import SessionOptions
    from .transport import BackoffPolicy, redact_url

    _check_stream_url(args.url, args.allow_insecure)
    if args.dialect in INBOUND_ONLY:
        raise ConfigError(
            f"--dialect {args.dialect}: those platforms connect to us, nobody dials them; "
            f"receive them with 'jitterline serve --dialect {args.dialect}', or play one "
            f"toward a server with 'jitterline load URL --dialect {args.dialect}'"
        )
    config = _config(args, dialect=args.dialect)
    _configure_plugins(args, host)
    initial_s, max_s = RUN_BACKOFF_S
    options = SessionOptions(
        url=args.url,
        tokens=_tokens(args),
        max_attempts=_max_attempts(args),
        allow_insecure=args.allow_insecure,
        duration_s=args.duration,
        backoff=BackoffPolicy(initial_s=initial_s, max_s=max_s),
    )
    source = {"command": "run", "url": redact_url(args.url), "dialect": args.dialect}
    result, view = _live(args, host, options, config, source, shown_duration_s=args.duration)
    return _report(args, result, source, view)


def _serve(args: argparse.Namespace, host: PluginHost) -> int:
    from .server.command import serve, serve_options, stop_limit_s
    from .server.workers import is_supervisor, supervise

    if is_supervisor(args):  # the workers load and configure the plugins, not the parent
        limit_s = stop_limit_s(serve_options(args), args.linger)
        return supervise(args, stop_limit_s=limit_s)
    _configure_plugins(args, host)
    return serve(args, host, _config(args, dialect=args.dialect))


def _replay(args: argparse.Namespace, host: PluginHost) -> int:
    from .live import replay

    _configure_plugins(args, host)
    header, result = replay(Path(args.capture), host=host, overrides=_pipeline_options(args))
    run = {"command": "replay", "capture": str(args.capture), "recorded": header.source}
    return _report(args, result, run, None)


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
    from .config import PipelineConfig

    return PipelineConfig(dialect=dialect, **_pipeline_options(args))


def _max_attempts(args: argparse.Namespace) -> int | None:
    return None if args.max_attempts == 0 else int(args.max_attempts)


def _shown_url(url: str) -> str:
    """The URL as the user typed it, less a query string (which may carry a token)."""
    head, sep, _ = url.partition("?")
    return head + ("?..." if sep else "")


def _check_url_shape(where: str, url: str, schemes: tuple[str, ...], example: str) -> SplitResult:
    """Scheme and host, with the URL echoed as the user gave it."""
    from urllib.parse import urlsplit

    shown = _shown_url(url)
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise ConfigError(
            f"{where} {shown!r} is not valid ({exc}); give one like {example}"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        what = f"has scheme {parts.scheme!r}" if scheme else "has no scheme"
        raise ConfigError(f"{where} {shown!r} {what}; give one like {example}")
    if not parts.hostname:
        raise ConfigError(f"{where} {shown!r} has no host; give one like {example}")
    return parts


def _check_stream_url(url: str, allow_insecure: bool) -> None:
    """The session's own checks, said in flags: the URL is echoed as given."""
    from .transport import is_loopback_host

    parts = _check_url_shape("URL", url, ("wss", "ws"), "wss://host/path")
    if (
        parts.scheme.lower() == "ws"
        and not allow_insecure
        and not is_loopback_host(parts.hostname or "")
    ):
        shown = _shown_url(url)
        raise ConfigError(
            f"URL {shown!r} is cleartext ws:// to a non-loopback host, which would send the "
            "bearer token in the clear: use wss://, or pass --allow-insecure on a trusted "
            "test network"
        )


def _tokens(args: argparse.Namespace) -> TokenProvider | None:
    from .transport import TokenProvider

    client_id = os.environ.get(CLIENT_ID_ENV, "")
    secret = os.environ.get(CLIENT_SECRET_ENV, "")
    if not client_id and not secret:
        log.warning(
            "%s and %s are not set: connecting without a bearer token",
            CLIENT_ID_ENV,
            CLIENT_SECRET_ENV,
        )
        return None
    if not client_id.strip() or not secret:
        missing = CLIENT_ID_ENV if not client_id.strip() else CLIENT_SECRET_ENV
        raise ConfigError(
            f"{missing} is not set; set both {CLIENT_ID_ENV} and {CLIENT_SECRET_ENV}"
        )
    auth = args.auth_url or os.environ.get(AUTH_URL_ENV) or args.region
    if not auth:
        raise ConfigError(
            f"no auth server: pass --auth-url URL or --region NAME, or set {AUTH_URL_ENV}"
        )
    where = "--auth-url" if args.auth_url else "--region" if args.region else AUTH_URL_ENV
    if "://" in auth:
        _check_url_shape(where, auth, ("https", "http"), "https://login.mypurecloud.com")
    from .redact import register_credentials

    register_credentials(client_id, secret)  # masked wherever text leaves the process
    try:
        return TokenProvider(auth, client_id, secret)
    except ConfigError as exc:
        raise ConfigError(f"{where} {_shown_url(auth)!r}: {exc}") from exc


def _configure_plugins(args: argparse.Namespace, host: PluginHost) -> None:
    host.call("jitterline_configure", options=dict(vars(args)))


def _live(
    args: argparse.Namespace,
    host: PluginHost,
    options: SessionOptions,
    config: PipelineConfig,
    source: dict[str, Any],
    *,
    shown_duration_s: float | None,
) -> tuple[RunResult, LiveView]:
    """The run with its live view: registered as a plugin for the run (verdict, alerts),
    fed the connection events, and shown unless ``--quiet``."""
    from .live import run_live
    from .runtime import tune_gc
    from .status import AttemptLog, LiveView, StatusLogHandler, make_status

    tune_gc()

    view = LiveView(max_attempts=options.max_attempts, duration_s=shown_duration_s)
    handler = next(
        (h for h in logging.getLogger().handlers if isinstance(h, StatusLogHandler)), None
    )
    display = None if args.quiet else make_status(sys.stderr, view, handler=handler)
    host.register(view, name="jitterline.live_view")
    try:
        result = run_live(
            options,
            config=config,
            host=host,
            status=AttemptLog(view, display),
            record=None if args.record is None else Path(args.record),
            source=source,
        )
    finally:
        host.unregister(view)
    return result, view


def _report(
    args: argparse.Namespace, result: RunResult, run: dict[str, Any], view: LiveView | None
) -> int:
    from .summary import render, summarize

    code = _exit_code(result)
    if result.messages > 0 or result.outcome is None:
        diagnosis = result.diagnosis
        print(f"diagnosis: {diagnosis.verdict}: {diagnosis.summary}", file=sys.stderr)
        print(f"action: {diagnosis.action}", file=sys.stderr)
        failures = result.plugin_failures
        summary = summarize(result.stats, diagnosis, run=run, plugin_failures=failures)
        _write_summary(args, render(summary))
    if result.outcome is not None:
        line = _outcome_line(args, result, view)
        print(f"jitterline: error: {line}", file=sys.stderr)
    elif result.interrupted:
        why = "stopped by SIGTERM" if code == EXIT_TERMINATED else "interrupted"
        print(f"jitterline: {why}; the summary covers the run up to then", file=sys.stderr)
    elif code == EXIT_OUTPUT:
        names = ", ".join(sorted(result.plugin_failures or {}))
        print(
            f"jitterline: error: plugin {names} failed during the run (see above); its "
            f"output is incomplete; fix what it said, or leave it out with --disable NAME",
            file=sys.stderr,
        )
    elif code == EXIT_NO_AUDIO:
        print(
            "jitterline: error: no audio was played: nothing arrived, or nothing the "
            "dialect could decode; check the URL and --dialect",
            file=sys.stderr,
        )
    return code


def _outcome_line(args: argparse.Namespace, result: RunResult, view: LiveView | None) -> str:
    """The session's fatal error in the user's terms: a give-up names the attempts, the
    flag that bounds them, the last failure and where to look next."""
    outcome = result.outcome
    cause = outcome.__cause__ if outcome is not None else None
    if not isinstance(outcome, ConnectionLost) or cause is None:
        return _in_flags(str(outcome))
    attempts = view.streak if view is not None else getattr(result.session, "attempts", 0)
    last = _in_flags(str(cause))
    if "token endpoint" in last:
        step = (
            f"check --auth-url / --region ({AUTH_URL_ENV}) and that the auth server is reachable"
        )
    else:
        url = getattr(args, "url", None)
        where = repr(_shown_url(url)) if url else "the endpoint"
        step = f"check that {where} is up and reachable, or raise --max-attempts"
    bound = f"--max-attempts {args.max_attempts}"
    return f"gave up after {attempts} attempts ({bound}); last: {last}; {step}"


_LIBRARY_TERMS = (
    (
        "no TokenProvider was given; pass tokens=TokenProvider(...)",
        f"the endpoint wants a bearer token: set {CLIENT_ID_ENV} and {CLIENT_SECRET_ENV}, "
        "and --auth-url or --region",
    ),
    ("allow_insecure=True", "--allow-insecure"),
    ("max_attempts", "--max-attempts"),
    ("max_frames", "--window-frames"),
    ("max_age_s", "--window-s"),
)
"""Library parameter names that reach the user through an error or a log line, in flags."""

_OPTION_NAME = re.compile(r"\b(buffer_ms|min_buffer_ms|max_buffer_ms|window_frames|window_s)=")


def _in_flags(text: str) -> str:
    for library, user in _LIBRARY_TERMS:
        text = text.replace(library, user)
    text = re.sub(r"(--[a-z][a-z-]*)=(\S)", r"\1 \2", text)
    return _OPTION_NAME.sub(lambda m: "--" + m.group(1).replace("_", "-") + " ", text)


def _write_summary(args: argparse.Namespace, text: str) -> None:
    from .redact import redact

    text = redact(text)
    if args.json is None or args.json == "-":
        print(text, flush=True)
        return
    try:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot write the summary to --json {args.json!r} ({exc.strerror}); "
            "pick a writable path"
        ) from exc


def _exit_code(result: RunResult) -> int:
    outcome = result.outcome
    if isinstance(outcome, AuthError):
        return EXIT_AUTH
    if isinstance(outcome, ConnectionLost):
        return EXIT_GAVE_UP
    if outcome is not None:
        return EXIT_FAILED
    if result.interrupted:
        return EXIT_TERMINATED if _SIGNALS.received == signal.SIGTERM else EXIT_INTERRUPTED
    if result.plugin_failures:
        return EXIT_OUTPUT
    if result.stats.frames.played == 0:
        return EXIT_NO_AUDIO
    return EXIT_OK


# -- output paths ---------------------------------------------------------------------------


def _check_outputs(args: argparse.Namespace) -> None:
    """Every output path, before anything connects: writable, and no two the same file
    (nor the capture a replay reads)."""
    outputs = [
        (flag, str(getattr(args, dest)))
        for flag, dest in getattr(args, "output_options", ())
        if getattr(args, dest, None) is not None
    ]
    for flag, value in outputs:
        _check_writable(flag, value)
    capture = getattr(args, "capture", None)
    named = [] if capture is None else [("the capture", str(capture))]
    named += [(flag, value) for flag, value in outputs if value != "-" and "{" not in value]
    seen: dict[Path, str] = {}
    for flag, value in named:
        key = Path(value).expanduser().resolve()
        if key in seen:
            raise ConfigError(
                f"{seen[key]} and {flag} both name {value!r}; one would overwrite the "
                "other: give each its own file"
            )
        seen[key] = flag


def _check_writable(flag: str, value: str) -> None:
    if value == "-":
        if flag != "--json":
            raise ConfigError(f"{flag} - is not supported; give a file name")
        return
    path = Path(value).expanduser()
    parent = path.parent
    if "{" in str(parent):
        return  # the directory depends on the stream: checked when the file opens
    if path.is_dir():
        raise ConfigError(f"{flag} {value!r} is a directory; give a file name inside it")
    if not parent.is_dir():
        raise ConfigError(
            f"{flag} {value!r}: directory {str(parent)!r} does not exist; create it first"
        )
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{flag} {value!r} is not writable; pick a writable path")


# -- plugins --------------------------------------------------------------------------------


def _preparse(argv: Sequence[str]) -> argparse.Namespace:
    """The options needed before the parser exists: logging (so that a plugin failing to
    load is reported in the same form) and which plugins to load."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _global_options(pre, top=True)
    _plugin_switches(pre)
    known, _ = pre.parse_known_args(argv)
    return known


def _host(known: argparse.Namespace) -> PluginHost:
    from .plugins import PluginHost

    return PluginHost(disabled=known.disable, enabled=known.enable, load_entrypoints=True)


def _add_plugin_options(parser: argparse.ArgumentParser, host: PluginHost) -> None:
    """Each plugin's options on its own: one that fails (an exception, a clashing flag) is
    named once and skipped, and ``--help`` still works."""
    hook = host.pm.hook.jitterline_add_options
    for impl in reversed(hook.get_hookimpls()):
        try:
            impl.function(*[parser for _ in impl.argnames])  # the spec has one argument
        except Exception as exc:
            name = impl.plugin_name
            if name not in host.broken:
                host.broken[name] = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "plugin %r is skipped: it failed to add its options (%s: %s); "
                    "disable it with %s=%s",
                    name,
                    type(exc).__name__,
                    exc,
                    DISABLE_ENV,
                    name,
                )
            host.unregister(impl.plugin)


def _disabled_owner(option: str, disabled: Iterable[str]) -> str | None:
    """Which disabled plugin would add ``option``: loaded only now, on the error path, into
    a scratch parser; a plugin that fails to load is simply not the owner."""
    import importlib.metadata

    blocked = set(disabled)
    for entry in importlib.metadata.entry_points(group="jitterline"):
        if entry.name not in blocked:
            continue
        scratch = argparse.ArgumentParser(add_help=False)
        try:
            add = getattr(entry.load(), "jitterline_add_options", None)
            if add is not None:
                add(parser=scratch)
        except Exception:
            continue
        if option in scratch._option_string_actions:
            return entry.name
    return None


class _Parser(argparse.ArgumentParser):
    """Refuses abbreviations, and explains an unknown option that a disabled plugin owns."""

    def __init__(self, *args: Any, disabled: frozenset[str] = frozenset(), **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.disabled = disabled

    def error(self, message: str) -> NoReturn:
        hint = ""
        if self.disabled and message.startswith("unrecognized arguments"):
            for option in re.findall(r"(--[\w-]+)", message):
                owner = _disabled_owner(option, self.disabled)
                if owner is not None:
                    hint = (
                        f"\n{self.prog}: {option} belongs to plugin {owner!r}, which is "
                        f"disabled (--disable or {DISABLE_ENV}); pass --enable {owner}"
                    )
                    break
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}{hint}\n")


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


def _global_options(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """Accepted before or after the command: on the command's parser their defaults are
    suppressed, so only a value given there overrides the one given before it."""
    group = parser.add_argument_group("global options")

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="more log lines: -v info, -vv debug",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="no live status display (log lines and the summary still appear)",
    )
    group.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=default(None),
        help="log verbosity on stderr (default: warning; overrides -v)",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="tracebacks with errors and log lines",
    )


def _common(parser: argparse.ArgumentParser, host: PluginHost) -> None:
    """Options of every stream command: buffer, window, output, logging, plugins."""
    from .config import CONCEALMENTS

    buffer = parser.add_argument_group("jitter buffer and latency window")
    buffer.add_argument(
        "--buffer-policy",
        choices=list(host.policies),
        help="how the buffer target is sized (default: adaptive)",
    )
    buffer.add_argument(
        "--buffer-ms",
        type=_number("--buffer-ms", low=0.0),
        metavar="MS",
        help="initial buffer target, or the fixed one",
    )
    buffer.add_argument(
        "--min-buffer-ms",
        type=_number("--min-buffer-ms", low=0.0),
        metavar="MS",
        help="lowest target (20)",
    )
    buffer.add_argument(
        "--max-buffer-ms",
        type=_number("--max-buffer-ms", low=0.0),
        metavar="MS",
        help="highest target (1000)",
    )
    buffer.add_argument(
        "--window-frames",
        type=_count("--window-frames", low=1, hint="500 keeps 10 s of 20 ms frames"),
        metavar="N",
        help="latency window size in frames (500)",
    )
    buffer.add_argument(
        "--window-s",
        type=_number("--window-s", low=0.0, above=True),
        metavar="S",
        help="latency window age limit in seconds (10)",
    )
    buffer.add_argument(
        "--conceal",
        choices=CONCEALMENTS,
        help="what plays for a lost PCM frame: silence (default), repeat, or speech (a "
        "faded pitch-period repeat); Opus always uses its decoder's concealment",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--json", metavar="FILE", help="write the JSON summary to FILE (- or absent: stdout)"
    )
    _global_options(parser)
    _plugin_switches(parser)
    first_plugin_action = len(parser._actions)
    _add_plugin_options(parser, host)
    own = [("--json", "json"), ("--record", "record")]
    plugin_outputs = [
        (action.option_strings[-1], action.dest)
        for action in parser._actions[first_plugin_action:]
        if action.option_strings and action.metavar in OUTPUT_METAVARS
    ]
    parser.set_defaults(output_options=tuple(own + plugin_outputs))


def _live_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--record", metavar="FILE", help="write every raw message to FILE (JSON Lines capture)"
    )
    parser.add_argument(
        "--max-attempts",
        type=_count("--max-attempts", low=0, hint="0 retries forever"),
        default=DEFAULT_MAX_ATTEMPTS,
        metavar="N",
        help="give up (exit 4) after N connection attempts in a row fail; 0: never "
        f"(default: {DEFAULT_MAX_ATTEMPTS})",
    )


DEMO_EXAMPLES = """examples:
  jitterline demo                                   # 10 s on a clean link
  jitterline demo --profile wifi --duration 5
  jitterline demo --profile clean --buffer-policy fixed --buffer-ms 400
  jitterline demo --profile lossy --record lossy.jsonl --json summary.json
  jitterline demo --audio speech.wav --profile wifi --conceal speech --wav out.wav
  jitterline demo --codec opus --profile lossy
profiles:
"""

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

EXIT_CODES = f"""exit codes:
  {EXIT_OK} done                      {EXIT_OUTPUT} an output failed during the run
  {EXIT_FAILED} the stream failed         {EXIT_NO_AUDIO} no audio was played
  {EXIT_USAGE} usage error               {EXIT_INTERRUPTED} interrupted (Ctrl-C)
  {EXIT_AUTH} authentication failed     {EXIT_TERMINATED} stopped by SIGTERM
  {EXIT_GAVE_UP} gave up (--max-attempts)
start with: jitterline demo"""


def _parser(host: PluginHost) -> argparse.ArgumentParser:
    from .emulator import PROFILES
    from .protocols.appfoundry import FORMATS

    parser = _Parser(
        prog="jitterline",
        description="Resilient real-time audio stream pipeline for WebSocket voice streams.",
        epilog=EXIT_CODES,
        formatter_class=_FORMATTER,
        disabled=host.disabled,
    )
    parser.add_argument("-V", "--version", action="version", version=f"jitterline {__version__}")
    _global_options(parser, top=True)
    commands = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        parser_class=cast("type[_Parser]", functools.partial(_Parser, disabled=host.disabled)),
    )

    demo = commands.add_parser(
        "demo",
        help="stream from a local emulated endpoint through the pipeline",
        description="Start the local endpoint with an impairment profile, connect the full\n"
        "pipeline to it, show a live status, then print the diagnosis (stderr) and the\n"
        "JSON summary (stdout).",
        epilog=DEMO_EXAMPLES
        + "\n".join(f"  {name:12s}{imp.description}" for name, imp in PROFILES.items()),
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
        type=_number("--duration", low=0.0, above=True),
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
    demo.add_argument(
        "--dialect",
        default="appfoundry",
        choices=("appfoundry", "audiohook", "audioconnector", "twilio"),
        help="appfoundry: we dial the local endpoint (default); audiohook, "
        "audioconnector, twilio: the endpoint plays the platform and dials our serve",
    )
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
        "--duration",
        type=_number("--duration", low=0.0, above=True),
        metavar="S",
        help="stop after S seconds (default: never)",
    )
    run.add_argument(
        "--allow-insecure",
        action="store_true",
        help="allow cleartext ws:// to a non-loopback host (logs a warning)",
    )
    _live_options(run)
    _common(run, host)
    run.set_defaults(handler=_run)

    from .server.command import SERVE_EXAMPLES, add_serve_options

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
        "it is enabled (or broken: failed to load, and skipped).",
        epilog="examples:\n  jitterline plugins\n  jitterline plugins --disable wav_sink\n"
        "  jitterline plugins --json",
        formatter_class=_FORMATTER,
    )
    plugins.add_argument(
        "--json", dest="plugins_json", action="store_true", help="print the list as JSON"
    )
    _global_options(plugins)
    _plugin_switches(plugins)
    plugins.set_defaults(handler=_plugins)

    from . import loadgen

    _global_options(loadgen.add_parser(commands))  # -q: no progress lines
    from . import analyze

    batch = analyze.add_parser(commands)
    _global_options(batch)  # -q: no progress counter
    _plugin_switches(batch)
    host.call("jitterline_register_commands", subparsers=commands)
    return parser


def _number(flag: str, *, low: float, above: bool = False) -> Callable[[str], float]:
    """An argparse type for a finite number >= ``low`` (> with ``above``), in flag terms."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        too_low = value <= low if above else value < low
        if too_low or not math.isfinite(value):
            bound = f"> {low:g}" if above else f">= {low:g}"
            raise argparse.ArgumentTypeError(f"{text} must be a finite number {bound}")
        return value

    parse.__name__ = flag  # argparse names the type in "invalid <name> value"
    return parse


def _count(flag: str, *, low: int, hint: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} is below {low}; {hint}")
        return value

    parse.__name__ = flag
    return parse


# -- logging, signals, main ------------------------------------------------------------------


class _Formatter(logging.Formatter):
    """``jitterline: warning: ...`` in the user's terms; a traceback only with ``--debug``
    (else the exception in one line), so a failing plugin is one line, not forty."""

    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        text = _in_flags(record.getMessage())
        where = f"{record.name}: " if self.debug else ""
        line = f"jitterline: {record.levelname.lower()}: {where}{text}"
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if self.debug:
                return line + "\n" + self.formatException(record.exc_info)
            line += f" ({type(exc).__name__}: {exc})"
        return line


_SPOKEN_FOR = frozenset({"session %s: attempt failed: %s"})
"""Library log lines the command says in its own words (``AttemptLog``'s "attempt 3/10
failed ...; next in 2 s", the final error line); shown too with ``-v``."""


def _not_spoken_for(record: logging.LogRecord) -> bool:
    """Also drops the ``plugin_error`` alert's log line: the host's own line about the
    failing plugin says the same, and a failure is said once."""
    if record.msg in _SPOKEN_FOR:
        return False
    return not (record.name == "jitterline.alerts" and "plugin_error: " in record.getMessage())


def _setup_logging(args: argparse.Namespace) -> None:
    """One handler on the root logger, writing through the live display (see
    ``jitterline.status``); warnings of other libraries show too, in the same form."""
    from .status import StatusLogHandler

    verbose = getattr(args, "verbose", 0) or 0
    level = args.log_level or ("debug" if verbose >= 2 else "info" if verbose else "warning")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, StatusLogHandler)]:
        root.removeHandler(old)
    handler = StatusLogHandler(sys.stderr)
    handler.setFormatter(_Formatter(args.debug))
    if level in {"warning", "error"}:
        handler.addFilter(_not_spoken_for)
    root.addHandler(handler)
    from .redact import install_log_redaction

    install_log_redaction([handler])
    root.setLevel(logging.WARNING)
    for name in ("jitterline", "jitterline_plugins"):
        logging.getLogger(name).setLevel(level.upper())
    logging.captureWarnings(True)


def _teardown_logging() -> None:
    from .status import StatusLogHandler

    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StatusLogHandler)]:
        root.removeHandler(handler)
    logging.captureWarnings(False)


class _Signals:
    """SIGTERM is handled as Ctrl-C: the first of either stops the run cleanly (summary,
    capture ``end`` line) and is remembered for the exit code; a second one while shutting
    down quits at once, still without a traceback."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        self.received = None
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            sys.stderr.write("jitterline: interrupted again: quitting at once\n")
            sys.stderr.flush()
            os._exit(EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED)
        self.received = signum
        raise KeyboardInterrupt

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def quit_at_once(self) -> None:
        """After ``main`` returned: the process is only waiting for threads to end."""
        if self.received is None:
            self.received = signal.SIGINT


_SIGNALS = _Signals()


def _asks_version(arguments: Sequence[str]) -> bool:
    """``-V``/``--version`` before the command: answered before any plugin or heavy module
    loads, so it works even with a broken plugin installed."""
    for arg in arguments:
        if arg in ("-V", "--version"):
            return True
        if not arg.startswith("-"):
            return False
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """The command. Called with ``argv`` (tests, embedding), it puts back the signal
    handlers, the unraisable hook and the logging it set up; as the process's command it
    leaves them, so that a signal while the process waits for its threads to end exits at
    once, without a traceback."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if _asks_version(arguments):
        print(f"jitterline {__version__}")
        return EXIT_OK
    debug = "--debug" in arguments
    in_main_thread = argv is None or _is_main_thread()
    if in_main_thread:
        _SIGNALS.install()
    unraisable = sys.unraisablehook
    sys.unraisablehook = _ignore_unraisable
    try:
        return _main(arguments, debug)
    except KeyboardInterrupt:
        terminated = _SIGNALS.received == signal.SIGTERM
        print(
            "jitterline: " + ("stopped by SIGTERM" if terminated else "interrupted"),
            file=sys.stderr,
        )
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        if argv is None:
            _SIGNALS.quit_at_once()
        else:
            sys.unraisablehook = unraisable
            _teardown_logging()
            if in_main_thread:
                _SIGNALS.restore()


def _main(arguments: list[str], debug: bool) -> int:
    try:
        known = _preparse(arguments)
        _setup_logging(known)
        host = _host(known)
        parser = _parser(host)
        args = parser.parse_args(arguments)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        _setup_logging(args)
        _check_outputs(args)
        args.arguments = tuple(arguments)  # serve --workers starts its workers with them
        handler: Handler = args.handler
        return handler(args, host)
    except JitterlineError as exc:
        _explain(exc, debug)
        return EXIT_AUTH if isinstance(exc, AuthError) else EXIT_USAGE
    except Exception as exc:
        if _SIGNALS.received is not None:
            # The interruption turned into another error on its way up (numpy, for one,
            # reports a KeyboardInterrupt during its import as a failed import).
            raise KeyboardInterrupt from exc
        # a bug: still one line, unless --debug asks for more
        _explain(exc, debug, prefix=f"internal error ({type(exc).__name__}): ")
        return EXIT_FAILED


def _ignore_unraisable(unraisable: Any) -> None:
    """Errors in finalizers (``__del__`` of a half-built object after the real error was
    reported) would print a traceback each; they are logged at debug level only."""
    log.debug(
        "ignored in %r: %s: %s",
        unraisable.object,
        type(unraisable.exc_value).__name__,
        unraisable.exc_value,
    )


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _explain(exc: BaseException, debug: bool, prefix: str = "") -> None:
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"jitterline: error: {prefix}{_in_flags(str(exc))}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
