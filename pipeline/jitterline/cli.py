"""The ``jitterline`` command.

Exit codes are an interface: 0 done, 2 usage error, 3 authentication failed, 4 gave up
after the maximum reconnect attempts, 130 interrupted (after a clean shutdown).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .errors import JitterlineError
from .plugins import PluginHost

__all__ = ["EXIT_AUTH", "EXIT_GAVE_UP", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_GAVE_UP = 4
EXIT_INTERRUPTED = 130

log = logging.getLogger(__name__)


def _plugins(args: argparse.Namespace) -> int:
    host = PluginHost(disabled=args.disable)
    for info in host.info():
        state = "enabled" if info.enabled else "disabled"
        origin = f" ({info.distribution})" if info.distribution else ""
        print(f"{info.name}{origin}: {state}")
        for hook in info.hooks:
            print(f"    {hook}")
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jitterline",
        description="Resilient real-time audio stream pipeline for WebSocket voice streams.",
    )
    parser.add_argument("--version", action="version", version=f"jitterline {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    plugins = commands.add_parser(
        "plugins",
        help="list installed plugins and their hooks",
        description="List the installed plugins, the hooks each implements, and whether "
        "it is enabled.",
        epilog="example: jitterline plugins --disable wav_sink",
    )
    plugins.add_argument(
        "--disable", action="append", default=[], metavar="NAME", help="block a plugin"
    )
    plugins.set_defaults(handler=_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        code: int = args.handler(args)
    except JitterlineError as exc:
        print(f"jitterline: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
